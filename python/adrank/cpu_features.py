"""The CPU this server runs on, as far as integer kernels care: its vendor, model name, and which of avx2, avx512f,
avx512_vnni, avx_vnni and amx_int8 it has.

Why these: ONNX Runtime's integer GEMM (MLAS) picks its kernel by them. With AMX (amx_int8), AVX-512 VNNI or
AVX-VNNI it adds uint8 x int8 products in 32 bits; with AVX2 alone it adds pairs of them in 16 bits with
saturation, so a model whose int8 weights use 8 bits scores differently there (repository/integer_kernels.py
says which models can). A load-time parity failure names them (lifecycle/version_loader.py), and /metrics
carries them as `adrank_cpu_info` (metrics/exporter.py), so that scores that differ between replicas can be
traced to the kind of CPU each one runs on.

Contract:
- `cpu_features()` reads /proc/cpuinfo once per process (the first processor's vendor_id, model name and flags;
  every core of one machine has the same). Where it cannot be read or has no x86 `flags` line (not Linux, not
  x86-64), every feature is unknown: `summary()` says "unknown" and the metric's labels say "unknown".
- `summary()`: the features present, by name, in the order above, and the VNNI ones as "no X" when missing,
  e.g. "avx2, no avx512_vnni, no avx_vnni" (an AVX2-only AMD EPYC) or "avx2, avx512f, avx512_vnni, no avx_vnni".
- `labels()`: short, stable label values: vendor and model name as the CPU reports them, and "true"/"false"
  (or "unknown") per feature.
Thread-safety: the first call reads the file; the result is immutable and cached (functools.cache).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

# The features that decide which integer GEMM kernel ONNX Runtime runs, in the order the summary names them.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
# Named even when missing: without one of them (or AMX) the int8 kernels add in 16 bits.
VNNI = ("avx512_vnni", "avx_vnni")
UNKNOWN = "unknown"
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    vendor: str  # vendor_id: "GenuineIntel", "AuthenticAMD"; "unknown"
    model_name: str  # "AMD EPYC 7B13"; "unknown"
    flags: frozenset[str] | None  # the CPU's flags; None: unknown

    def has(self, feature: str) -> bool | None:
        """Whether the CPU has the feature; None when its flags are unknown."""
        return None if self.flags is None else feature in self.flags

    def summary(self) -> str:
        """The integer-kernel features: present ones by name, VNNI ones as "no X" when missing; or "unknown"."""
        if self.flags is None:
            return UNKNOWN
        flags = self.flags
        return ", ".join(f if f in flags else f"no {f}" for f in FEATURES if f in flags or f in VNNI)

    def labels(self) -> dict[str, str]:
        """The metric's labels: vendor, model_name, and "true"/"false"/"unknown" per feature."""
        features = {f: UNKNOWN if self.has(f) is None else str(self.has(f)).lower() for f in FEATURES}
        return {"vendor": self.vendor, "model_name": self.model_name, **features}


def parse_cpuinfo(text: str) -> CpuFeatures:
    """The first processor's block of /proc/cpuinfo's text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags")
    return CpuFeatures(
        vendor=fields.get("vendor_id") or UNKNOWN,
        model_name=" ".join(fields.get("model name", "").split()) or UNKNOWN,
        flags=None if flags is None else frozenset(flags.split()),
    )


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's CPU, read once."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    except OSError:
        return CpuFeatures(UNKNOWN, UNKNOWN, None)
