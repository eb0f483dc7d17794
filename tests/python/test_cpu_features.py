"""The CPU's integer-kernel features (python/adrank/cpu_features.py): parsed from /proc/cpuinfo's text, summed
up for a parity failure's reason and labelled for /metrics. Nothing here assumes this machine's CPU: the
parsing is checked on texts of known CPUs, and the live reading against /proc/cpuinfo as it is."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from adrank.cpu_features import FEATURES, VNNI, CpuFeatures, cpu_features, parse_cpuinfo

AMD_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2 avx512_vnni
"""
INTEL_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: sse4_2 avx avx2 avx512f avx512bw avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp
CPU implementer\t: 0x41
"""
SUMMARY = re.compile(r"^unknown$|^((no )?[a-z0-9_]+)(, (no )?[a-z0-9_]+)*$")


@pytest.mark.parametrize(
    ("text", "summary", "vendor", "model_name"),
    [
        (AMD_AVX2, "avx2, no avx512_vnni, no avx_vnni", "AuthenticAMD", "AMD EPYC 7B12"),
        (
            INTEL_VNNI,
            "avx2, avx512f, avx512_vnni, avx_vnni, amx_int8",
            "GenuineIntel",
            "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        ),
        (ARM, "unknown", "unknown", "unknown"),
        ("", "unknown", "unknown", "unknown"),
    ],
    ids=["AVX2-only AMD (first processor's flags)", "Intel with VNNI and AMX", "ARM: no x86 flags", "empty"],
)
def test_the_summary_names_present_features_and_missing_vnni(text: str, summary: str, vendor: str, model_name: str):
    cpu = parse_cpuinfo(text)
    assert (cpu.summary(), cpu.vendor, cpu.model_name) == (summary, vendor, model_name)


def test_the_labels_are_short_and_stable():
    labels = parse_cpuinfo(AMD_AVX2).labels()
    assert labels == {
        "vendor": "AuthenticAMD",
        "model_name": "AMD EPYC 7B12",
        "avx2": "true",
        "avx512f": "false",
        "avx512_vnni": "false",
        "avx_vnni": "false",
        "amx_int8": "false",
    }
    assert set(parse_cpuinfo(ARM).labels().values()) == {"unknown"}
    assert CpuFeatures("x", "y", frozenset({"avx_vnni"})).summary() == "no avx512_vnni, avx_vnni"


def test_this_machine_is_read_as_proc_cpuinfo_says():
    cpu = cpu_features()
    assert cpu is cpu_features()  # read once
    assert SUMMARY.match(cpu.summary()), cpu.summary()
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        assert cpu.summary() == "unknown"
        return
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split(":")[1].split()
    for feature in FEATURES:
        assert cpu.has(feature) == (feature in flags)
        assert cpu.labels()[feature] == str(feature in flags).lower()
        named = feature in flags or feature in VNNI
        assert (feature in cpu.summary().split(", ") or f"no {feature}" in cpu.summary().split(", ")) == named
    vendor = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("vendor_id"))
    assert cpu.vendor == vendor.split(":")[1].strip() and cpu.model_name != "unknown"
