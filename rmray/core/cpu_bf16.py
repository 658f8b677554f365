"""Whether bf16 on this CPU runs in hardware or in emulation.

Without AVX512-BF16 or AMX, torch's CPU bf16 kernels convert to float32 and back around scalar work:
on the AVX2 machines rmray is tested on, a 1024² matmul ran at 0.8-1.0 GFLOP/s in bf16 against 96-162
in float32 (BENCHMARKS.md, stops 20-21), and a training step ~40x slower. Nothing fails; the run is just
that slow. So a run that asks for bf16 on such a CPU is told, once, at its start.
"""

from __future__ import annotations

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's flags; None where there is no ``/proc/cpuinfo`` (not Linux) or no flags line."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def slow_bf16_warning(device_type: str, use_bf16: bool, dtype: str, cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The warning for a CPU run in bf16 (autocast or bfloat16 weights) without native bf16, else None."""
    if device_type != "cpu" or not (use_bf16 or dtype == "bfloat16"):
        return None
    flags = cpu_flags(cpuinfo_path)
    if flags is None or flags & set(NATIVE_FLAGS) or "avx2" not in flags:
        return None  # unknown (not Linux, or not x86): say nothing rather than guess
    asked = "bf16=true" if use_bf16 else "dtype=bfloat16"
    return (f"{asked} on a CPU without AVX512-BF16 or AMX: torch emulates bf16 here, tens of times slower "
            "than float32 (a 1024x1024 matmul: ~1 vs ~100+ GFLOP/s). Set bf16=false dtype=float32 for CPU runs "
            "on this CPU.")
