"""The capture worker's heap: freed tensor memory goes back to the system between passes (glibc).

Without this, a capture worker grows with the number of passes (the depth of the network)
although each pass holds at most one budget of tensors.
"""

from __future__ import annotations

import ctypes


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps it otherwise).

    Each capture pass frees a runtime session and a group of tensors; without a trim the
    freed pages stay resident and fragments add up over passes, so the process would grow
    with the number of passes, i.e. with the depth of the network.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def tune_heap(mmap_threshold: int = 4 * 1024 * 1024) -> None:
    """Serve every allocation above ``mmap_threshold`` bytes by its own mapping, returned when freed (glibc only).

    glibc otherwise raises its threshold (up to 32 MB) each time a mapped block is freed;
    large tensors then come from the heap, and fragments of their pages stay resident on top
    of the next run's (on the 640x640 detector: +10% peak). Below a few MB, heap reuse is
    kept: a fresh mapping costs a page fault per page on every run (256 KB: 12% slower).

    Freed heap memory is kept until :func:`release_memory` (between passes) instead of being
    trimmed as soon as 128 KB are free at the top: the reductions' per-chunk temporaries
    were faulted in afresh each time (on the detector: 0.65 M of 1.1 M page faults, 0.6 s of
    system time; same peak).
    """
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h


def _glibc():
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them (find_library would fork)
    except OSError:
        return None
    # malloc_trim and mallopt are glibc's: without them (musl, macOS) there is nothing to tune
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_libc = _glibc()
