"""Run a command and measure its wall time and the peak RSS of its whole process tree."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import psutil


@dataclass
class TreeRun:
    """Outcome of :func:`run_measured`.

    Attributes:
        wall_s: start of the process to its exit, seconds.
        peak_tree_rss: max over samples of the summed RSS of the process and all its
            descendants, bytes. Pages shared between processes (libraries, the Python
            interpreter) count once per process, which penalises multi-process tools.
        peak_single_rss: ``ru_maxrss`` of the tree from ``wait4``: the largest peak of any
            single process in it (exact, not sampled), bytes.
        peak_processes: most processes alive at one sample.
        samples: number of RSS samples taken.
        peak_by_role: like ``peak_tree_rss`` but summing only the processes of one role
            (see ``role`` in :func:`run_measured`), bytes.
    """

    returncode: int
    wall_s: float
    peak_tree_rss: int
    peak_single_rss: int
    peak_processes: int
    samples: int
    stdout: str
    stderr: str
    peak_by_role: dict[str, int] = field(default_factory=dict)


def _sample(root: psutil.Process, role: Callable[[list[str]], str], roles: dict[int, str]) -> tuple[int, int, dict]:
    """(total RSS, process count, RSS per role) of the root and its descendants right now."""
    total, count, by_role = 0, 0, {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total, count, by_role
    for proc in procs:
        try:
            rss = proc.memory_info().rss
            if proc.pid not in roles:
                roles[proc.pid] = "root" if proc.pid == root.pid else role(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total, count = total + rss, count + 1
        by_role[roles[proc.pid]] = by_role.get(roles[proc.pid], 0) + rss
    return total, count, by_role


def _other(cmdline: list[str]) -> str:
    return "descendants"


def run_measured(cmd: Sequence[str], interval_s: float = 0.02, timeout_s: float = 600.0,
                 env: dict | None = None, cwd: str | None = None,
                 role: Callable[[list[str]], str] = _other) -> TreeRun:
    """Run ``cmd`` to completion, sampling the tree's RSS every ``interval_s``.

    ``role`` names the role of a descendant from its command line (asked once per
    process); the root's role is ``"root"``.

    The child is reaped with ``os.wait4`` (not ``Popen.wait``) to get its rusage. On
    timeout the whole tree is killed and ``TimeoutError`` raised.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        root = psutil.Process(proc.pid)
        peak, peak_procs, samples = 0, 0, 0
        peak_by_role: dict[str, int] = {}
        roles: dict[int, str] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, count, by_role = _sample(root, role, roles)
            peak, peak_procs, samples = max(peak, rss), max(peak_procs, count), samples + 1
            for key, value in by_role.items():
                peak_by_role[key] = max(peak_by_role.get(key, 0), value)
            if time.perf_counter() - start > timeout_s:
                _kill_tree(root)
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise TimeoutError(f"{cmd[:3]} ran over {timeout_s} s")
            time.sleep(interval_s)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return TreeRun(proc.returncode, wall, peak, usage.ru_maxrss * 1024, peak_procs, samples,
                       out.read(), err.read(), peak_by_role)


def _kill_tree(root: psutil.Process) -> None:
    try:
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
