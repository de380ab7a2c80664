"""How the host reaches an agent: start it somewhere, hand back a ZeroMQ endpoint, stop it.

Every transport starts the same agent command (``python -m qbench.agent`` or the
deployed bundle) bound to loopback, and reads its one ready line from stdout::

    QBENCH_AGENT_READY tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import abc
from typing import Sequence

READY_PREFIX = "QBENCH_AGENT_READY "


def agent_args(cache_dir: str, threads: int | None = None, cpus: list[int] | None = None,
               memory_limit_mb: int | None = None, runtimes: Sequence[str] = ()) -> list[str]:
    """The agent's arguments, the same for every transport: loopback only, gone when its stdin closes.

    ``runtimes``: what the first job will run on; the agent starts importing them as it starts.
    """
    args = ["--bind", "tcp://127.0.0.1:0", "--cache-dir", cache_dir, "--exit-on-stdin-eof"]
    if runtimes:
        args += ["--warm", ",".join(runtimes)]
    if threads:
        args += ["--threads", str(threads)]
    if cpus:
        args += ["--cpus", ",".join(map(str, cpus))]
    if memory_limit_mb:
        args += ["--memory-limit-mb", str(memory_limit_mb)]
    return args


class TransportError(Exception):
    """The agent could not be started or reached; the message is one line for the user."""


class AgentTransport(abc.ABC):
    """Starts an agent and exposes it as a local ZeroMQ endpoint."""

    #: a short label for reports ("local", "ssh pi@10.0.0.2")
    label: str = ""

    @abc.abstractmethod
    def start(self, runtimes: Sequence[str] = ()) -> str:
        """Start the agent, preloading ``runtimes``; return the endpoint the host connects its DEALER to."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the agent and release everything; safe to call twice."""

    def stderr_tail(self, lines: int = 20) -> str:
        """The agent's last stderr lines, for error messages."""
        return ""

    def __enter__(self) -> "AgentTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
