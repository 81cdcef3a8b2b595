"""How the benchmark scripts name the machine they ran on.

Every EPYC reports itself as "AMD EPYC", whether or not its int8 products run
with VNNI, and that decides how fast the int8 model is (ADR 12). So a report
header names the CPU's vector extensions beside its model, the same way
``mmt bench`` does.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model and its integer-product extensions: ``AMD EPYC, AVX-512 + VNNI``."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or platform.processor() or "unknown"
    return f"{model}, {vector_extensions(fields['flags'])}" if "flags" in fields else model


def vector_extensions(flags: str) -> str:
    """``AVX-512 + VNNI``, ``AVX2, no VNNI``, ... from a /proc/cpuinfo flags line."""
    present = set(flags.split())
    widest = "AVX-512" if "avx512f" in present else "AVX2" if "avx2" in present else "no AVX2"
    vnni = " + VNNI" if present & {"avx512_vnni", "avx_vnni"} else ", no VNNI"
    return widest + vnni + (" + AMX" if "amx_int8" in present else "")
