"""How the agent runs (:class:`AgentConfig`), and the zygotes it starts before anything else.

Nothing here imports numpy, ZeroMQ or a runtime: ``python -m qbench.agent`` starts the zygotes
it was asked to warm first, so that their imports (the runtime's above all) overlap the agent's
own instead of following them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .launcher import Zygotes
from .runners import COMPILED, RUNTIMES


@dataclass
class AgentConfig:
    """How the agent runs; the emulation fields make this machine act like a smaller device."""

    bind: str = "tcp://127.0.0.1:0"
    cache_dir: str = "~/.qbench/cache"
    max_frame_bytes: int = 512 * 1024 * 1024
    max_model_bytes: int = 2 * 1024 * 1024 * 1024
    chunk_bytes: int = 8 * 1024 * 1024
    threads: int | None = None
    cpus: list[int] = field(default_factory=list)
    memory_limit_mb: int | None = None
    worker_cmd: list[str] = field(default_factory=lambda: [sys.executable])
    exit_on_stdin_eof: bool = False
    warm: list[str] = field(default_factory=list)  # runtimes whose zygotes start with the agent
    keys: tuple[bytes, bytes] | None = None  # CURVE: (agent secret key, host public key), Z85; None: no auth
    delegate_paths: list[str] = field(default_factory=list)  # the only external delegate libraries jobs may load
    max_message_bytes: int = 1024 * 1024 * 1024  # all frames of one request
    max_frames: int = 256  # tensor frames of one request
    cache_max_bytes: int | None = None  # None: a tenth of the cache's file system


def start_zygotes(config: AgentConfig) -> Zygotes:
    """The agent's zygotes, those of ``config.warm`` already starting (only known runtimes: the
    names come from the host, and each names a log file)."""
    zygotes = Zygotes(config.worker_cmd, lambda: _worker_env(config),
                      Path(config.cache_dir).expanduser() / "zygotes",
                      {"cpus": config.cpus, "memory_limit_mb": config.memory_limit_mb})
    zygotes.warm([r for r in config.warm if r in RUNTIMES and r != COMPILED])
    return zygotes


def _worker_env(config: AgentConfig) -> dict[str, str]:
    env = dict(os.environ)
    # Workers import qbench exactly as the agent did (installed package, bundle or source tree).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    return env
