"""Peak resident memory of this process, as the kernel counts it."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """VmHWM (peak resident set size) in MiB; ru_maxrss where /proc is missing (macOS: bytes)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


#: bounds of the automatic capture budget: a pass too small to hold a layer, or one so large that
#: fewer passes no longer pay for the memory
AUTO_BUDGET_MIN = 16 * 1024 * 1024
AUTO_BUDGET_MAX = 1024 * 1024 * 1024


def auto_capture_budget(memory_limit_mb: int | None = None) -> int:
    """The capture budget when the host leaves it to the agent: a quarter of the memory available now.

    Available is the kernel's MemAvailable (total memory where unknown), or the workers' emulated
    limit if lower; a quarter leaves room for the runtime, both sessions and the host's other work.
    """
    available = _meminfo("MemAvailable:") or total_memory_bytes()
    if memory_limit_mb:
        available = min(available, memory_limit_mb * 1024 * 1024)
    return int(min(max(available // 4, AUTO_BUDGET_MIN), AUTO_BUDGET_MAX))


def _meminfo(key: str) -> int:
    """A /proc/meminfo figure in bytes, 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def total_memory_bytes() -> int:
    """Physical memory of the machine, 0 if unknown."""
    total = _meminfo("MemTotal:")
    if total:
        return total
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
