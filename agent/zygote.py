"""Workers forked from a preloaded process (a "zygote", as Android's and multiprocessing's forkserver).

A fresh ``python -m qbench.agent.worker`` pays the interpreter start and the imports of numpy,
qbench and the runtime on every job (0.15-0.25 s on a desktop, seconds on a small board), and a
run does four or five jobs. Instead the agent keeps one zygote per runtime (:mod:`.launcher`),
``python -m qbench.agent.zygote FD RUNTIME``, which imports all that once and then forks a
worker per job; the worker runs :func:`qbench.agent.worker.main` exactly as the spawned one did,
in its own session, with its own stdout pipe (progress lines) and stderr file, and with the
agent's CPU affinity and address-space limit. An empty RUNTIME preloads nothing
runtime-specific: the probe job imports every runtime itself.

Why forking after these imports is safe: the zygote never creates a runtime session, so no ONNX
Runtime or LiteRT thread pool, arena or delegate exists when it forks. The threads it has are
OpenBLAS's idle pool (shut down around fork() by OpenBLAS's own atfork handler and started again
in the child on first use) and one ONNX Runtime thread that waits on a condition variable, which
the child does not need. Forking after ``import onnxruntime`` and then building and running
sessions in the child was checked: tests/test_zygote.py and every agent test do it.

Why the memory figures stay honest: Linux sets a forked child's VmHWM to its resident size at
fork (``dup_mm`` resets ``hiwater_rss``), and the worker first maps the file pages its zygote
has resident, which fork() does not copy (:mod:`.resident`). So a worker's peak starts from
"runtime imported, nothing else", as a spawned worker's did, and the baseline job, forked from
the same zygote, measures exactly that start.

Agent <-> zygote, over a unix socketpair, one JSON line each way:

- agent: ``{"jobdir", "cpus", "memory_limit_mb"}`` with two fds (SCM_RIGHTS): the write end of
  the worker's stdout pipe and its stderr file;
- zygote: ``{"pid": N}`` once forked, then ``{"status": S}`` when the worker exited
  (``os.waitstatus_to_exitcode``: -9 for SIGKILL). One worker at a time per zygote.

A zygote exits when its socket reaches EOF (the agent stopped or died), killing a worker it
still runs, so nothing outlives the agent.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import traceback
from typing import NoReturn


from . import resident
from .runners import import_runtime
from .zygote_link import Lines, kill_group, send

#: how often the zygote checks on its worker where the kernel has no pidfd (before Linux 5.3)
POLL_S = 0.005


def limit_process(cpus: list[int], memory_limit_mb: int | None) -> None:
    """The emulated device's CPU affinity and address-space limit, applied to the calling process."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if memory_limit_mb:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str] | None = None) -> int:
    fd, runtime = argv if argv is not None else sys.argv[1:]
    sock = socket.socket(fileno=int(fd))
    _preload(runtime)
    pages = resident.file_pages()
    lines = Lines(sock)
    while True:
        request = lines.read(None)
        if request is None:
            return 0
        fds, lines.fds = lines.fds, []
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_worker(sock, request, fds, pages)
        for fd in fds:
            os.close(fd)  # the worker holds them now: the agent sees EOF when the worker exits
        try:
            send(sock, {"pid": pid})
            status = _reap(pid, sock)
            if status is None:
                return 0
            send(sock, {"status": status})
        except OSError:  # the agent is gone
            kill_group(pid)
            os.waitpid(pid, 0)
            return 0


def _preload(runtime: str) -> None:
    # here, not at the top: the agent imports this module (.launcher) and must not load the worker's
    from . import worker  # noqa: F401  numpy, the protocol, capture, timing: what every worker imports

    if runtime:
        try:
            import_runtime(runtime)
        except Exception:  # the worker imports it again and reports a typed error to the host
            traceback.print_exc()


def _run_worker(sock: socket.socket, request: dict, fds: list[int], pages: list[tuple[int, int]]) -> NoReturn:
    """The forked worker: the zygote's resident set, its own session, the job's stdout and stderr, the
    device limits, then the job."""
    code = 1
    try:
        resident.map_pages(pages)  # first: VmHWM must start where a spawned worker's did after its imports
        sock.close()
        os.setsid()
        for target, fd in zip((1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        limit_process(request.get("cpus") or [], request.get("memory_limit_mb"))
        from .worker import main as worker_main

        code = worker_main([request["jobdir"]])
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(pid: int, sock: socket.socket) -> int | None:
    """The worker's exit code once it exits; None if the agent went away meanwhile (the worker is killed)."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    watched = [sock]
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            waits = watched + ([pidfd] if pidfd is not None else [])
            ready = select.select(waits, [], [], None if pidfd is not None else POLL_S)[0]
            if sock in ready:
                if not sock.recv(1, socket.MSG_PEEK):
                    kill_group(pid)
                    os.waitpid(pid, 0)
                    return None
                watched = []  # a request before the status breaks the protocol: it waits for this worker
    finally:
        if pidfd is not None:
            os.close(pidfd)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Nothing of the zygote needs tearing down, and unloading the runtime would hold up the
    # agent's exit (it reaps its zygotes) by tens of milliseconds.
    os._exit(code)
