"""The training precision is chosen from the CPU's features, and the reason is said: tested with faked CPUs."""

import pytest

from digitlab.core.errors import ConfigError
from digitlab.core.hardware import CpuInfo, choose_precision, cpu_info

EPYC_FP32 = CpuInfo("AMD EPYC 7B13", frozenset({"avx2", "fma"}))
EPYC_BF16 = CpuInfo("AMD EPYC 9B14", frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
XEON_AMX = CpuInfo("Intel Xeon Platinum 8481C", frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}))


def test_auto_takes_bf16_only_where_the_cpu_has_it():
    assert choose_precision("auto", "cpu", EPYC_BF16, bf16_supported=True).dtype == "bfloat16"
    assert choose_precision("auto", "cpu", XEON_AMX, bf16_supported=True).reason == "this CPU has native bf16: AMX-bf16"
    fp32 = choose_precision("auto", "cpu", EPYC_FP32, bf16_supported=False)
    assert fp32.dtype is None and fp32.line().startswith("precision: fp32 (fp32: this CPU has no native bf16")
    assert "AVX2/FMA (fp32 only)" in fp32.reason


def test_fp32_and_cuda_are_what_they_say():
    assert choose_precision("fp32", "cpu", XEON_AMX, bf16_supported=True).dtype is None
    assert choose_precision("auto", "cuda", EPYC_FP32, bf16_supported=False).dtype == "float16"


def test_isa_names():
    assert CpuInfo("x", frozenset({"avx512f"})).isa == "AVX-512 (no bf16)"
    assert CpuInfo("x", frozenset()).isa == "no AVX2"


def test_cpu_info_reads_proc_cpuinfo(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(
        "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse2 avx2 fma bmi2\n\n"
    )
    info = cpu_info(fake)
    assert info.model == "AMD EPYC 7B13" and info.flags == {"avx2", "fma"} and info.family_model == "family 25 model 1"
    assert cpu_info(tmp_path / "missing").flags == frozenset()


def test_an_isa_cap_makes_a_bf16_cpu_an_fp32_one(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: AMD EPYC 9B14\nflags\t\t: avx2 fma avx512f avx512_bf16\n")
    assert cpu_info(fake, isa_cap="").isa == "AVX-512 + bf16"
    capped = cpu_info(fake, isa_cap="avx2")
    assert capped.flags == {"avx2", "fma"} and capped.isa == "AVX2/FMA (fp32 only)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_info(fake).isa == "AVX2/FMA (fp32 only)"  # as oneDNN will run it
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu_info(fake).isa == "AVX-512 + bf16"


def test_bf16_kernels_without_native_bf16_instructions_train_in_fp32():
    # oneDNN can run bf16 on AVX2 by emulation (or past an ONEDNN_MAX_CPU_ISA cap): slower than fp32
    choice = choose_precision("auto", "cpu", EPYC_FP32, bf16_supported=True)
    assert choice.dtype is None and "no native bf16" in choice.reason
    unknown = CpuInfo("arm64", frozenset())  # no x86 flags to go by: trust the library
    assert choose_precision("auto", "cpu", unknown, bf16_supported=True).dtype == "bfloat16"


def test_presets_have_an_fp32_variant_chosen_where_training_runs_in_fp32(monkeypatch):
    import torch

    from digitlab.cli.train import _variant
    from digitlab.core.config import FP32_VARIANTS, get_preset, recipe_line

    fast32 = get_preset("fast", "fp32")
    assert fast32.variant == "fp32" and fast32 == get_preset("fast").set(variant="fp32", **FP32_VARIANTS["fast"])
    assert recipe_line(fast32) == "recipe: fast, fp32 variant (epochs=3, batch_size=128)"
    assert recipe_line(get_preset("fast")) == "recipe: fast"
    assert get_preset("seed", "fp32") == get_preset("seed")  # no fp32 variant: trains as defined
    with pytest.raises(ConfigError, match="unknown variant"):
        get_preset("fast", "int4")

    cases = [(EPYC_FP32, False, "fp32"), (EPYC_BF16, True, ""), (XEON_AMX, True, ""),
             (EPYC_BF16, False, "fp32")]  # fmt: skip  # the last: bf16 flags, but oneDNN without bf16 kernels
    for cpu, native, want in cases:
        monkeypatch.setattr("digitlab.core.hardware.cpu_info", lambda cpu=cpu: cpu)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert _variant("fast", "auto", "cpu") == want, cpu
    assert _variant("seed", "auto", "cpu") == ""  # asks for fp32, but has no variant
    assert _variant("fast", "none", "cpu") == "" and _variant("fast", "fp32", "cpu") == "fp32"
