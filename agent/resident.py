"""A forked worker's resident set made equal to its zygote's, so that its VmHWM means what a spawned worker's did.

Linux starts a forked child's VmHWM at the child's resident size, but fork() does not copy the
page-table entries of file mappings that were never written (shared-library code, read-only
data): the child faults those pages in again when it runs them. A worker forked from a zygote
that imported ONNX Runtime therefore starts about 18 MB below the zygote's RSS, and then counts
the runtime code it runs again as memory the model added (the delta of a small convnet went from
12 to 20 MB). The zygote records which file pages it has resident (:func:`file_pages`), and each
worker maps exactly those at start (:func:`map_pages`): the worker then starts at the zygote's
RSS, which is what a spawned worker had after importing the same modules.
"""

from __future__ import annotations

import ctypes
import errno
import mmap

import numpy as np

#: madvise(2) advice (Linux 5.14+): fill the page table of a range as reads would, without reading
MADV_POPULATE_READ = 22


def file_pages() -> list[tuple[int, int]]:
    """(address, length) of each run of this process's file-backed pages that is in its page table.

    Empty where /proc/self/pagemap is missing (not Linux).
    """
    runs: list[tuple[int, int]] = []
    page = mmap.PAGESIZE
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps.read().splitlines():
                fields = line.split(maxsplit=5)
                path = fields[5] if len(fields) == 6 else ""
                # files only: anonymous memory is copied by fork(), device mappings are not ours to touch
                if not path.startswith("/") or path.startswith("/dev/") or not fields[1].startswith("r"):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                pagemap.seek(start // page * 8)
                # bit 63 of a pagemap entry: the page is present; other bits need privileges and are unused
                present = (np.frombuffer(pagemap.read((end - start) // page * 8), np.uint64) >> 63).astype(np.int8)
                edges = np.flatnonzero(np.diff(np.concatenate(([0], present, [0]))))
                runs.extend((start + int(a) * page, int(b - a) * page) for a, b in zip(edges[::2], edges[1::2]))
    except OSError:
        return []
    return runs


def map_pages(runs: list[tuple[int, int]]) -> None:
    """Map the pages of ``runs`` (from the zygote's :func:`file_pages`) into this process's page table."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in runs:
        if libc.madvise(start, length, MADV_POPULATE_READ) != 0 and ctypes.get_errno() == errno.EINVAL:
            # an advice older kernels (< 5.14) do not know: read one byte of each page instead (they exist:
            # the zygote has them mapped); other errors (a mapping gone since) leave the run alone
            for address in range(start, start + length, mmap.PAGESIZE):
                ctypes.c_char.from_address(address).value
