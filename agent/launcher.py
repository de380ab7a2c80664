"""How the agent starts workers: forked by a zygote per runtime (:mod:`.zygote`), reused across jobs.

The agent asks :class:`Zygotes` for a worker per job; the :class:`Worker` it gets back has the
parts of ``subprocess.Popen`` the agent's pump uses (pid, stdout, poll, wait, returncode), so the
progress forwarding is the same as for a spawned process. A zygote that died is started again
once for the job; one that cannot start, or does not answer by the job's deadline, is a typed
error (worker_crashed, worker_timeout), never a hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Callable

from qbench.protocols.messages import ErrorCode, ProtocolError

from .zygote_link import Lines, kill_group, send

#: the module a zygote runs
ENTRY = "qbench.agent.zygote"

#: how long a zygote may take to report a worker the agent has just SIGKILLed
KILL_WAIT_S = 10.0
#: how long a zygote may take to exit on EOF (it may be finishing its imports) before it is killed
STOP_WAIT_S = 2.0


def job_runtime(job: dict) -> str:
    """The zygote a job runs in: its runner's runtime; "" for the probe, which imports every runtime itself."""
    runner = job.get("runner") or job.get("request", {}).get("runner") or {}
    return runner.get("runtime", "")


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (memory cgroups' kills
    included); None where ``/proc/vmstat`` does not say (before Linux 4.13)."""
    try:
        with open("/proc/vmstat", "rb") as fh:
            for line in fh:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class ZygoteGone(Exception):
    """The zygote exited (EOF on its socket)."""


class Zygote:
    """One zygote process for one runtime, as the agent sees it."""

    def __init__(self, command: list[str], runtime: str, env: dict[str, str], log_path: Path):
        self.runtime, self.log_path = runtime, log_path
        ours, theirs = socket.socketpair()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_path, "wb") as log:
                # a session of its own: a terminal's Ctrl-C reaches the agent, which then stops the zygote
                self.proc = subprocess.Popen(
                    [*command, "-m", ENTRY, str(theirs.fileno()), runtime], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=log, env=env, pass_fds=[theirs.fileno()], start_new_session=True,
                )
        except OSError as exc:
            ours.close()
            raise ZygoteGone(f"cannot run {command[0]}: {exc}") from exc
        finally:
            theirs.close()
        self.sock = ours
        self.lines = Lines(ours)
        self.alive = True

    def fork(self, request: dict, fds: list[int], deadline: float) -> int:
        """Start a worker; its pid. Raises ZygoteGone, or TimeoutError at ``deadline`` (monotonic)."""
        try:
            send(self.sock, request, fds)
        except OSError as exc:
            raise self._gone() from exc
        reply = self.lines.read(deadline)
        if reply is None:
            raise self._gone()
        return int(reply["pid"])

    def status(self, deadline: float) -> int:
        """The running worker's exit code. Raises ZygoteGone, or TimeoutError at ``deadline``."""
        reply = self.lines.read(deadline)
        if reply is None:
            raise self._gone()
        return int(reply["status"])

    def _gone(self) -> ZygoteGone:
        self.alive = False
        return ZygoteGone(self.describe_exit())

    def describe_exit(self) -> str:
        """How the zygote ended, with the tail of what it wrote to stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_WAIT_S)
        tail = "\n".join(deque(self.log_path.read_text(errors="replace").splitlines(), maxlen=15))
        return f"worker zygote for {self.runtime or 'the probe'} exited with status {self.proc.returncode}\n{tail}".rstrip()

    def close(self) -> None:
        """Stop the zygote: EOF first (it exits, killing a worker it still runs), SIGKILL if it lingers."""
        self.alive = False
        self.sock.close()
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Worker:
    """A forked worker, with the parts of ``subprocess.Popen`` the agent's pump uses."""

    def __init__(self, pid: int, stdout, zygote: Zygote):
        self.pid, self.stdout, self.zygote = pid, stdout, zygote
        self.returncode: int | None = None

    def poll(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self.zygote.status(None if timeout is None else time.monotonic() + timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout) from None
            except ZygoteGone as exc:  # nobody can reap the worker now: it must not run on unseen
                kill_group(self.pid)
                self.returncode = -signal.SIGKILL
                raise ProtocolError(ErrorCode.WORKER_CRASHED, str(exc)) from exc
        return self.returncode

    def finish(self) -> None:
        """Kill the worker's process group if it still runs, collect its status, close its stdout."""
        try:
            if self.poll() is None:
                kill_group(self.pid)
                try:
                    self.wait(KILL_WAIT_S)
                except subprocess.TimeoutExpired:  # a zygote that cannot reap a killed worker is replaced
                    self.zygote.close()
                    self.returncode = -signal.SIGKILL
        finally:
            self.stdout.close()


class Zygotes:
    """The agent's zygotes, one per runtime, started on demand (or ahead by :meth:`warm`) and reused.

    Args:
        command: the interpreter command (AgentConfig.worker_cmd).
        env: the workers' environment, asked for at each start.
        log_dir: where each zygote's stderr goes (``zygote-<runtime>.log``).
        limits: ``cpus`` and ``memory_limit_mb`` for every worker.
    """

    def __init__(self, command: list[str], env: Callable[[], dict[str, str]], log_dir: Path, limits: dict):
        self.command, self.env, self.log_dir, self.limits = command, env, log_dir, limits
        self._live: dict[str, Zygote] = {}

    def warm(self, runtimes: list[str]) -> None:
        """Start the zygotes of ``runtimes`` now, without waiting: they import while the agent serves."""
        for runtime in runtimes:
            with contextlib.suppress(ZygoteGone):  # the job that needs it says why
                self._get(runtime)

    def pids(self) -> dict[str, int]:
        """Runtime -> pid of its zygote."""
        return {runtime: z.proc.pid for runtime, z in self._live.items()}

    def _get(self, runtime: str) -> Zygote:
        zygote = self._live.get(runtime)
        if zygote is None or not zygote.alive or zygote.proc.poll() is not None:
            if zygote is not None:
                zygote.close()
            log = self.log_dir / f"zygote-{runtime or 'probe'}.log"
            zygote = self._live[runtime] = Zygote(self.command, runtime, self.env(), log)
        return zygote

    def start(self, runtime: str, jobdir: Path, stderr_fd: int, timeout_s: float) -> Worker:
        """Fork a worker for the job in ``jobdir``, its stderr going to ``stderr_fd``.

        Raises:
            ProtocolError: worker_crashed if no zygote can be started, worker_timeout if none answers in time.
        """
        deadline = time.monotonic() + timeout_s
        read_fd, write_fd = os.pipe()
        try:
            zygote, pid = self._fork(runtime, {"jobdir": str(jobdir), **self.limits}, [write_fd, stderr_fd], deadline)
        except TimeoutError:
            os.close(read_fd)
            self.stop(runtime)
            raise ProtocolError(ErrorCode.WORKER_TIMEOUT,
                                f"no worker started within {timeout_s:.0f} s (runtime {runtime!r})") from None
        except BaseException:
            os.close(read_fd)
            # between a fork request and its reply: a pid or status may still come, and the next job
            # would read it as its own, so this zygote is not asked again
            self.stop(runtime)
            raise
        finally:
            os.close(write_fd)  # the worker holds the write end: its exit is EOF on ours
        return Worker(pid, open(read_fd, "rb", buffering=0), zygote)

    def _fork(self, runtime: str, request: dict, fds: list[int], deadline: float) -> tuple[Zygote, int]:
        try:
            return self._fork_once(runtime, request, fds, deadline)
        except ZygoteGone:  # killed, or died since its last job: one fresh zygote for this job
            try:
                return self._fork_once(runtime, request, fds, deadline)
            except ZygoteGone as exc:
                raise ProtocolError(ErrorCode.WORKER_CRASHED, f"cannot start a worker: {exc}") from exc

    def _fork_once(self, runtime: str, request: dict, fds: list[int], deadline: float) -> tuple[Zygote, int]:
        zygote = self._get(runtime)
        return zygote, zygote.fork(request, fds, deadline)

    def stop(self, runtime: str) -> None:
        """Stop the zygote of ``runtime`` (e.g. the probe's, which is not needed again)."""
        zygote = self._live.pop(runtime, None)
        if zygote is not None:
            zygote.close()

    def close(self) -> None:
        """Stop every zygote and reap it."""
        for runtime in list(self._live):
            self.stop(runtime)
