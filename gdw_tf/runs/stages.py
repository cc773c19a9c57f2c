"""Time and memory at each stage of a run: `results.json`'s `timing.stages`.

A run marks the end of each stage (the data read and scanned, the split, training, the
label-issue pass, `label_issues.csv`, the report, the review page, ...); each mark records the
stage's wall seconds, the process' resident memory at its end and its peak so far (Linux'
`/proc/self/statm` and `getrusage`). A stage's own peak is not separable from an earlier
one's: where `peak_rss_mb` rises at a mark, that stage set a new peak.
"""

import os
import resource
import time


def current_rss_mb() -> float:
    """The process' resident memory now, in MB (0 where `/proc` is missing)."""
    try:
        with open("/proc/self/statm") as file:
            pages = int(file.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The process' peak resident memory so far, in MB (`ru_maxrss`, KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """The stages of a run so far, each `{"stage", "seconds", "rss_mb", "peak_rss_mb"}`."""

    def __init__(self):
        self.records = []
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        """Ends `stage`: records its seconds since the previous mark, and the memory now."""
        now = time.perf_counter()
        self.records.append(
            {
                "stage": stage,
                "seconds": round(now - self._last, 3),
                "rss_mb": round(current_rss_mb(), 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
        self._last = now
