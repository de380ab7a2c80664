"""Runtimes the agent knows, imported lazily so a board with one runtime still runs."""

from __future__ import annotations

import importlib
from typing import Callable

from qbench.protocols.messages import ErrorCode, ProtocolError, RunnerConfig, RuntimeInfo

from .base import Runner

#: runtime name -> "module:class"; the module also defines ``runtime_info() -> RuntimeInfo``.
RUNTIMES = {
    "onnxruntime": "qbench.agent.runners.onnxrt:OnnxRuntimeRunner",
    "tflite": "qbench.agent.runners.litert:LiteRTRunner",
}


def _module(runtime: str):
    if runtime not in RUNTIMES:
        raise ProtocolError(ErrorCode.RUNTIME_MISSING, f"unknown runtime {runtime!r}; known: {sorted(RUNTIMES)}")
    return importlib.import_module(RUNTIMES[runtime].split(":")[0])


def runner_class(runtime: str) -> Callable[..., Runner]:
    """The Runner class for ``runtime``. Raises ProtocolError(runtime_missing) if not installed."""
    try:
        module = _module(runtime)
    except ImportError as exc:
        raise ProtocolError(ErrorCode.RUNTIME_MISSING, f"{runtime} is not installed on the agent: {exc}") from exc
    return getattr(module, RUNTIMES[runtime].split(":")[1])


def available_runtimes() -> dict[str, RuntimeInfo]:
    """Every runtime that imports here, with its version and providers/delegates."""
    found = {}
    for runtime in RUNTIMES:
        try:
            found[runtime] = _module(runtime).runtime_info()
        except (ImportError, ProtocolError):
            continue
    return found


def import_runtime(config: RunnerConfig) -> None:
    """Import the runtime only (for the memory baseline worker)."""
    runner_class(config.runtime)
    _module(config.runtime).runtime_info()
