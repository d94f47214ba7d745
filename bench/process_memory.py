"""Resident memory of benchmark processes (Linux /proc; pure Python, no MindSpore import)."""
from __future__ import annotations

import os
import resource
import threading
import time
from typing import Callable, Union

# Printed on stdout by a process that `watch_rss` ends, followed by what happened.
STOP_MARK = "STOPPED "


def rss_mb(pid: Union[int, str] = "self") -> float:
    """Current resident memory (VmRSS) of process `pid` in MB: what it holds now, unlike the peak."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """Highest resident memory this process has had so far (ru_maxrss), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def watch_rss(limit_mb: float, label: Callable[[], str]) -> None:
    """End this process at once (exit 3) when its RSS passes `limit_mb` (checked every 50 ms),
    printing `STOP_MARK`, the RSS and `label()` (where it was) on stdout: a run that does not fit
    must not push the machine into swap or the OOM killer."""
    def watch():
        while True:
            rss = rss_mb()
            if rss > limit_mb:
                print(f"{STOP_MARK}RSS {rss:,.0f} MB passed {limit_mb:,.0f} MB {label()}", flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
