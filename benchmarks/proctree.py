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
        peak_tree_rss: peak RSS of the process and all its descendants together, bytes:
            the max over samples of their summed RSS, or ``peak_single_rss`` if larger
            (a spike shorter than the sampling interval is still caught that way). Pages
            shared between processes (libraries, the interpreter) count once per process,
            which penalises multi-process tools.
        peak_single_rss: ``ru_maxrss`` of the tree from ``wait4``: the largest peak of any
            single process in it (exact, not sampled), bytes.
        peak_by_process: per process id, its command line and its max sampled RSS (bytes).
        background_cpu_pct: CPU used during the run by everything outside the tree and
            this sampler, as a percentage of all CPUs: other jobs distorting the timing.
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
    peak_by_process: dict[int, tuple[list[str], int]] = field(default_factory=dict)
    background_cpu_pct: float = 0.0


def _sample(root: psutil.Process, role: Callable[[list[str]], str], roles: dict[int, str],
            per_process: dict[int, tuple[list[str], int]]) -> tuple[int, int, dict]:
    """(total RSS, process count, RSS per role) of the root and its descendants right now.

    Also raises each process's entry in ``per_process`` to its current RSS.
    """
    total, count, by_role = 0, 0, {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total, count, by_role
    for proc in procs:
        try:
            rss = proc.memory_info().rss
            if proc.pid not in roles:
                cmdline = proc.cmdline()
                roles[proc.pid] = "root" if proc.pid == root.pid else role(cmdline)
                per_process[proc.pid] = (cmdline, 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total, count = total + rss, count + 1
        per_process[proc.pid] = (per_process[proc.pid][0], max(per_process[proc.pid][1], rss))
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
        busy0, own0 = _busy_seconds(), _own_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        root = psutil.Process(proc.pid)
        peak, peak_procs, samples = 0, 0, 0
        peak_by_role: dict[str, int] = {}
        roles: dict[int, str] = {}
        per_process: dict[int, tuple[list[str], int]] = {}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss, count, by_role = _sample(root, role, roles, per_process)
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
        foreign = _busy_seconds() - busy0 - (_own_seconds() - own0) - (usage.ru_utime + usage.ru_stime)
        background = max(0.0, foreign) / (wall * (psutil.cpu_count() or 1)) * 100.0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        single = usage.ru_maxrss * 1024
        return TreeRun(proc.returncode, wall, max(peak, single), single, peak_procs, samples,
                       out.read(), err.read(), peak_by_role, per_process, background)


def _busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


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
