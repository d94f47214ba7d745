"""What every benchmark prints about the machine it ran on: the CPU (model, cores, vector ISA
flags, which decide the kernels oneDNN and the compilers pick) and the load average (the
benchmarks share the machine with whatever else runs)."""
from __future__ import annotations

import os
from typing import Dict


def cpu_description() -> Dict[str, str]:
    """CPU model, core count, the avx/fma/sse4 flags (sorted, space-separated) and
    ONEDNN_MAX_CPU_ISA as this process sees it."""
    model, flags = "unknown", []
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    isa = sorted(flag for flag in flags if flag.startswith(("avx", "fma", "sse4")))
    return {"cpu": model, "cores": str(os.cpu_count()), "isa": " ".join(isa),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def cpu_line() -> str:
    """`cpu_description` on one line: "model; N cores; flags"."""
    cpu = cpu_description()
    return f"{cpu['cpu']}; {cpu['cores']} cores; {cpu['isa']}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, space-separated ("unknown" without /proc)."""
    try:
        return " ".join(open("/proc/loadavg", encoding="utf-8").read().split()[:3])
    except OSError:
        return "unknown"
