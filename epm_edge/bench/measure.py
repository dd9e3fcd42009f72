"""Timing and memory probes that run inside a worker process."""

from __future__ import annotations

import resource
import sys
import time
from typing import Sequence


def single_pair_seconds(scorer, texts: Sequence[tuple[str, str]]) -> list[float]:
    """Single-stream latency: one pair per call, as a request-serving host would see it."""
    out = []
    for pair in texts:
        start = time.perf_counter()
        scorer.score([pair])
        out.append(time.perf_counter() - start)
    return out


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image so far.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. getrusage's ru_maxrss does not:
    it keeps the parent's peak from before the fork, so a big parent would inflate every worker.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss
