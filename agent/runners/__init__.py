"""Runtimes the agent knows, imported lazily so a board with one runtime still runs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from qbench.protocols.messages import ErrorCode, LiteRTRunnerConfig, ProtocolError, RunnerConfig, RuntimeInfo

if TYPE_CHECKING:  # not at run time: the agent imports this module before numpy (agent/config.py)
    from .base import Runner

#: runtime name -> "module:class"; the module also defines ``runtime_info() -> RuntimeInfo``.
#: LiteRT's CompiledModel: times a ``tflite`` model when RunnerConfig.accelerator is set; its providers are
#: the accelerators that work on the device
COMPILED = "litert-compiled"
RUNTIMES = {
    "onnxruntime": "qbench.agent.runners.onnxrt:OnnxRuntimeRunner",
    "tflite": "qbench.agent.runners.litert:LiteRTRunner",
    COMPILED: "qbench.agent.runners.litert_compiled:CompiledModelRunner",
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


def runner_for(config: RunnerConfig) -> Callable[..., Runner]:
    """The Runner class that times a model with ``config``: CompiledModel for a tflite accelerator."""
    return runner_class(runtime_of(config))


def runtime_of(config: RunnerConfig) -> str:
    """The runtime that times a model with ``config``: LiteRT's CompiledModel for a tflite accelerator."""
    return COMPILED if isinstance(config, LiteRTRunnerConfig) and config.accelerator else config.runtime


def check_accelerator(config: RunnerConfig, runtimes: dict[str, RuntimeInfo]) -> None:
    """Refuses an accelerator the probe did not find: LiteRT would silently run on the CPU instead."""
    if runtime_of(config) != COMPILED:
        return
    available = runtimes[COMPILED].providers if COMPILED in runtimes else []
    if config.accelerator.lower() not in available:
        raise ProtocolError(ErrorCode.PROVIDER_MISSING, f"LiteRT accelerator {config.accelerator!r} is not available "
                                                        f"on the agent; available: {', '.join(available) or 'none'}")


def probed_with(runtimes: list[str]) -> list[str]:
    """The known runtimes a session of ``runtimes`` needs probed; all of them for none.

    A ``tflite`` session brings CompiledModel's accelerator trial along (its accelerators are checked
    and reported); an ONNX one does not wait for it.
    """
    wanted = [r for r in runtimes if r in RUNTIMES]
    if not wanted:
        return list(RUNTIMES)
    return [r for r in RUNTIMES if r in wanted or (r == COMPILED and "tflite" in wanted)]


def available_runtimes(runtimes: list[str]) -> dict[str, RuntimeInfo]:
    """Those of ``runtimes`` that import here, with their version and providers/delegates."""
    found = {}
    for runtime in runtimes:
        try:
            found[runtime] = _module(runtime).runtime_info()
        except (ImportError, ProtocolError):
            continue
    return found


def import_runtime(runtime: str) -> None:
    """Import the runtime only (for the memory baseline worker)."""
    runner_class(runtime)
    _module(runtime).runtime_info()
