"""How the host reaches an agent: start it somewhere, hand back a ZeroMQ endpoint, stop it.

Every transport starts the same agent command (``python -m qbench.agent`` or the
deployed bundle) bound to loopback, writes the run's fresh CURVE keys as the first line of its
stdin (:class:`RunKeys`, ``protocols/auth.py``), and reads its one ready line from stdout::

    QBENCH_AGENT_READY tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import zmq

from qbench.protocols.auth import keys_line

if TYPE_CHECKING:
    from ..run_state import RunState

READY_PREFIX = "QBENCH_AGENT_READY "


@dataclass(frozen=True)
class RunKeys:
    """The CURVE keys of one agent run (Z85): the agent's pair and the host's, made fresh for each start."""

    agent_public: bytes
    agent_secret: bytes
    host_public: bytes
    host_secret: bytes

    @classmethod
    def fresh(cls) -> "RunKeys":
        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())

    def stdin_line(self) -> bytes:
        """What the host writes first on the agent's stdin (``--keys-stdin``); never on its command line."""
        return keys_line(self.agent_secret, self.host_public)


class Endpoint(str):
    """The ZeroMQ endpoint a transport's ``start()`` returns, carrying the keys its agent admits:
    ``AgentClient(transport.start())`` then authenticates with no more said."""

    keys: RunKeys | None

    def __new__(cls, address: str, keys: RunKeys | None = None) -> "Endpoint":
        endpoint = super().__new__(cls, address)
        endpoint.keys = keys
        return endpoint


def agent_args(cache_dir: str, threads: int | None = None, cpus: list[int] | None = None,
               memory_limit_mb: int | None = None, runtimes: Sequence[str] = (),
               delegate_paths: Sequence[str] = (), cache_max_mb: int | None = None) -> list[str]:
    """The agent's arguments, the same for every transport: loopback only, CURVE keys read from stdin
    (:meth:`RunKeys.stdin_line`), gone when its stdin closes.

    ``runtimes``: what the first job will run on; the agent starts importing them as it starts.
    ``delegate_paths``: the external delegate libraries the run's jobs may load (nothing else loads).
    ``cache_max_mb``: the model cache's cap (None: the agent's default, a tenth of its file system).
    """
    args = ["--bind", "tcp://127.0.0.1:0", "--cache-dir", cache_dir, "--exit-on-stdin-eof", "--keys-stdin"]
    for path in delegate_paths:
        args += ["--allow-delegate", path]
    if runtimes:
        args += ["--warm", ",".join(runtimes)]
    if threads:
        args += ["--threads", str(threads)]
    if cpus:
        args += ["--cpus", ",".join(map(str, cpus))]
    if memory_limit_mb:
        args += ["--memory-limit-mb", str(memory_limit_mb)]
    if cache_max_mb:
        args += ["--cache-max-mb", str(cache_max_mb)]
    return args


class TransportError(Exception):
    """The agent could not be started or reached; the message is one line for the user."""


class AgentTransport(abc.ABC):
    """Starts an agent and exposes it as a local ZeroMQ endpoint."""

    #: a short label for reports ("local", "ssh pi@10.0.0.2")
    label: str = ""
    #: external delegate libraries the agent may load (devices.yaml ``delegate_path``, ``--delegate-path``)
    delegate_paths: tuple[str, ...] = ()

    def allow_delegate(self, path: str | None) -> None:
        """Let the agent about to start load the delegate library ``path`` (None: nothing)."""
        if path and path not in self.delegate_paths:
            self.delegate_paths = (*self.delegate_paths, path)

    @abc.abstractmethod
    def start(self, runtimes: Sequence[str] = ()) -> Endpoint:
        """Start the agent, preloading ``runtimes``; return the endpoint the host connects its DEALER to,
        with the run's keys."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the agent and release everything; safe to call twice."""

    def stderr_tail(self, lines: int = 20) -> str:
        """The agent's last stderr lines, for error messages."""
        return ""

    def retry_transport(self, failed: RunState) -> Optional[tuple["AgentTransport", str]]:
        """Where to run a job once more after it failed because of the device itself (not started), and
        why it failed; None: not retried. Only a labgrid ``tag:`` selection has another board
        (:mod:`qbench.host.lab.retry`)."""
        return None

    def __enter__(self) -> "AgentTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
