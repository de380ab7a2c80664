"""The local-emulation agent: a real agent process on loopback, started and stopped by the host."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Sequence

from .base import READY_PREFIX, AgentTransport, Endpoint, RunKeys, TransportError, agent_args

START_TIMEOUT_S = 60.0


class LocalTransport(AgentTransport):
    """Runs ``<python> -m qbench.agent`` on this machine.

    Args:
        python_cmd: interpreter command (e.g. an emulator prefix plus an arm64 python).
        cache_dir: the agent's model cache; defaults to ``~/.qbench/cache``.
        threads, cpus, memory_limit_mb: make this machine act like a smaller device.
        cache_max_mb: the model cache's cap (devices.yaml ``cache_max_mb``).
        env: extra environment for the agent.
    """

    def __init__(self, python_cmd: list[str] | None = None, cache_dir: str | None = None,
                 threads: int | None = None, cpus: list[int] | None = None,
                 memory_limit_mb: int | None = None, env: dict[str, str] | None = None, label: str = "local",
                 cache_max_mb: int | None = None):
        self.python_cmd = list(python_cmd or [sys.executable])
        self.cache_dir = cache_dir or str(Path("~/.qbench/cache").expanduser())
        self.threads, self.cpus, self.memory_limit_mb = threads, cpus or [], memory_limit_mb
        self.cache_max_mb = cache_max_mb
        self.env = env or {}
        self.label = label
        self._proc: subprocess.Popen | None = None
        self._stderr: deque[str] = deque(maxlen=200)

    def command(self, runtimes: Sequence[str] = ()) -> list[str]:
        return [*self.python_cmd, "-m", "qbench.agent", "--worker-cmd", shlex.join(self.python_cmd),
                *agent_args(self.cache_dir, self.threads, self.cpus, self.memory_limit_mb, runtimes,
                            self.delegate_paths, self.cache_max_mb)]

    def start(self, runtimes: Sequence[str] = ()) -> Endpoint:
        keys = RunKeys.fresh()
        try:
            self._proc = subprocess.Popen(
                self.command(runtimes), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env={**os.environ, **self.env},
            )
            self._proc.stdin.write(keys.stdin_line().decode())
            self._proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: it died before reading its keys (the stderr tail says why)
            if self._proc is None:
                raise TransportError(f"cannot start the local agent ({self.python_cmd[0]}): {exc}") from exc
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = _readline_with_timeout(self._proc, START_TIMEOUT_S)
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise TransportError(f"the local agent did not start: {self.stderr_tail(1) or line.strip() or 'no output'}")
        return Endpoint(line[len(READY_PREFIX):].strip(), keys)

    def _drain_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the agent stops on stdin EOF
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait()


def _readline_with_timeout(proc: subprocess.Popen, timeout_s: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0] if result else ""
