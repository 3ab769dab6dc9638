"""What the CPU can do (model name, vector ISA) and the training precision chosen from it, with the reason."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that decide CPU training speed
# oneDNN's ONEDNN_MAX_CPU_ISA caps the instructions PyTorch's CPU kernels use (an AVX2 cap makes a bf16 machine
# train as an fp32-only one would); these are the flags each cap leaves.
ISA_CAPS = {
    "AVX2": {"avx2", "fma"},
    "AVX512_CORE": {"avx2", "fma", "avx512f"},
    "AVX512_CORE_BF16": {"avx2", "fma", "avx512f", "avx512_bf16"},
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    family_model: str = ""  # "family 26 model 2" (x86 Linux): cloud CPUs often name themselves only "AMD EPYC"

    @property
    def isa(self) -> str:
        """The vector ISA in one phrase, e.g. 'AVX-512 + bf16' or 'AVX2/FMA (fp32 only)'."""
        if "amx_bf16" in self.flags:
            return "AMX-bf16"
        if "avx512_bf16" in self.flags:
            return "AVX-512 + bf16"
        if "avx512f" in self.flags:
            return "AVX-512 (no bf16)"
        if "avx2" in self.flags:
            return "AVX2/FMA (fp32 only)" if "fma" in self.flags else "AVX2 (fp32 only)"
        return "no AVX2"

    @property
    def native_bf16(self) -> bool | None:
        """Whether the CPU computes bf16 natively; None where the flags are unknown (not x86 Linux)."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"}) if self.flags else None

    def describe(self) -> str:
        return f"{self.model} ({self.isa})"


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo"), isa_cap: str | None = None) -> CpuInfo:
    """The CPU's model name and ISA flags from /proc/cpuinfo (Linux); elsewhere the platform's name, no flags.

    Flags above `isa_cap` (default: the ONEDNN_MAX_CPU_ISA environment variable, e.g. "AVX2") are dropped:
    PyTorch will not use them, so neither may the precision choice."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    ids: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model"):
                ids[key.strip()] = value.strip()
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split()) & frozenset(ISA_FLAGS)
                break
    except OSError:
        pass
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") if isa_cap is None else isa_cap) or ""
    if cap.upper() in ISA_CAPS:
        flags &= frozenset(ISA_CAPS[cap.upper()])
    family_model = f"family {ids['cpu family']} model {ids['model']}" if len(ids) == 2 else ""
    return CpuInfo(model, flags, family_model)


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: str | None  # "bfloat16", "float16", or None for plain fp32
    reason: str

    def line(self) -> str:
        return f"precision: {self.dtype or 'fp32'} ({self.reason})"


def choose_precision(precision: str, device_type: str, cpu: CpuInfo, bf16_supported: bool) -> PrecisionChoice:
    """`precision` "fp32" or "auto" -> what training runs in, and why. Pure: the caller supplies the facts."""
    if precision == "fp32":
        return PrecisionChoice(None, "asked for fp32")
    if device_type == "cuda":
        return PrecisionChoice("float16", "CUDA: fp16 autocast with a gradient scaler")
    # oneDNN may report bf16 kernels where the CPU only emulates them (an ISA cap, or no bf16 instructions).
    if device_type == "cpu" and bf16_supported and cpu.native_bf16 is not False:
        return PrecisionChoice("bfloat16", f"this CPU has native bf16: {cpu.isa}")
    if device_type == "cpu":
        return PrecisionChoice(None, f"fp32: this CPU has no native bf16 ({cpu.isa}); emulated bf16 would be slower")
    return PrecisionChoice(None, f"fp32 on {device_type}")
