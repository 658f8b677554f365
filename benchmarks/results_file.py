"""Where a benchmark's numbers came from, written into every results file beside them.

A ratio without its commit, date and hardware cannot be compared with the next measurement: the same
code measured 3.3x and 2.1x TRL on two CPUs of one cloud's "2-core VM". ``write_results`` adds
``measured_on`` (commit, UTC date, CPU model and cores, GPU, library versions) to the results.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess


def _commit() -> str:
    """HEAD, with ``+changes`` when the working tree differs from it (a copy without git: ``unknown``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("RMRAY_COMMIT", "unknown")


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and the vector extensions that decide CPU speed (bf16 above all: AMX or
    AVX512-BF16 doubles some ratios), from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def measured_on() -> dict:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("ray", "transformers", "trl"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    cpu, flags = _cpu()
    return {"commit": _commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cpu_flags": flags, "cpu_cores": os.cpu_count(), "gpu": gpu, "versions": versions}


def write_results(path: str, results, indent: int = 2) -> None:
    """``results`` (a dict, or a list wrapped as ``{"results": [...]}``) with ``measured_on``, to ``path``."""
    body = dict(results) if isinstance(results, dict) else {"results": results}
    body["measured_on"] = measured_on()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(body, f, indent=indent)
