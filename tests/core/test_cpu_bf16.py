"""The start-of-run warning for bf16 on a CPU that only emulates it (rmray.core.cpu_bf16)."""

from rmray.core.cpu_bf16 import cpu_flags, slow_bf16_warning

AVX2_ONLY = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n"
WITH_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


def _cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_the_first_processors_flags_are_read(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, AVX2_ONLY)) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    assert cpu_flags(_cpuinfo(tmp_path, "processor\t: 0\n")) is None


def test_bf16_on_an_avx2_only_cpu_is_warned_about_and_names_the_fix(tmp_path):
    info = _cpuinfo(tmp_path, AVX2_ONLY)
    autocast = slow_bf16_warning("cpu", True, "float32", info)
    assert autocast.startswith("bf16=true on a CPU without AVX512-BF16 or AMX") and "bf16=false dtype=float32" in autocast
    assert slow_bf16_warning("cpu", False, "bfloat16", info).startswith("dtype=bfloat16 on a CPU")


def test_no_warning_where_bf16_is_native_not_asked_for_or_not_on_cpu(tmp_path):
    assert slow_bf16_warning("cpu", True, "bfloat16", _cpuinfo(tmp_path, WITH_BF16)) is None
    assert slow_bf16_warning("cpu", True, "bfloat16", _cpuinfo(tmp_path, WITH_AMX)) is None
    avx2 = _cpuinfo(tmp_path, AVX2_ONLY)
    assert slow_bf16_warning("cpu", False, "float32", avx2) is None
    assert slow_bf16_warning("cuda", True, "bfloat16", avx2) is None
    # not x86, or no cpuinfo at all: no guess
    assert slow_bf16_warning("cpu", True, "float32", _cpuinfo(tmp_path, ARM)) is None
    assert slow_bf16_warning("cpu", True, "float32", str(tmp_path / "missing")) is None
