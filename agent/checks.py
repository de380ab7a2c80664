"""Checks of request fields the agent acts on itself, before any worker starts.

Each failure is a typed ProtocolError (``bad_message``, ``bad_input``, ``provider_missing``): a
request a hostile or broken host makes up must never reach a worker, or the agent's own arithmetic,
as something that ends in ``internal``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from qbench.protocols.messages import ErrorCode, LiteRTRunnerConfig, OrtRunnerConfig, ProtocolError, RunnerConfig, TimingConfig

#: a job's timeout may not exceed a week (a bigger one is a mistake, and an infinite one no deadline)
MAX_TIMEOUT_S = 7 * 24 * 3600.0
#: runtime threads per session: more than any device has
MAX_THREADS = 1024
#: repetition counts (timing runs, profiled runs)
MAX_COUNT = 1_000_000_000
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
ACCELERATORS = (None, "cpu", "gpu", "npu")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, message)


def check_timeout(timeout_s: float) -> None:
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise _bad(f"timeout_s must be a finite number of seconds in (0, {MAX_TIMEOUT_S:.0f}], not {timeout_s!r}")


def _count(name: str, value: int, low: int = 0, high: int = MAX_COUNT) -> None:
    if not low <= value <= high:
        raise _bad(f"{name} must be {low}..{high}, not {value}")


def _seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= MAX_TIMEOUT_S):
        raise _bad(f"{name} must be a finite number of seconds in [0, {MAX_TIMEOUT_S:.0f}], not {value!r}")


def check_timing(timing: TimingConfig, profile_runs: int = 0) -> None:
    for name in ("warmup", "runs", "max_runs"):
        _count(f"timing.{name}", getattr(timing, name))
    for name in ("min_seconds", "max_seconds"):
        _seconds(f"timing.{name}", getattr(timing, name))
    _count("profile_runs", profile_runs)


def check_runner(runner: RunnerConfig) -> None:
    """Thread counts and enumerations of a runner (its runtime and accelerator are checked against the probe)."""
    if runner.threads is not None:
        _count("runner.threads", runner.threads, 1, MAX_THREADS)
    if isinstance(runner, OrtRunnerConfig) and runner.graph_optimization not in GRAPH_OPTIMIZATIONS:
        raise _bad(f"runner.graph_optimization must be one of {GRAPH_OPTIMIZATIONS}, not {runner.graph_optimization!r}")
    if isinstance(runner, LiteRTRunnerConfig) and runner.accelerator not in ACCELERATORS:
        raise _bad(f"runner.accelerator must be one of {ACCELERATORS}, not {runner.accelerator!r}")


def check_delegate(runner: RunnerConfig, allowed: Sequence[str], cache_root: Path) -> None:
    """A ``delegate_path`` may only be one of the libraries the agent was started with (``--allow-delegate``).

    Loading a library runs its code: a path from a request (an uploaded "model" in the cache above
    all) would let whoever sends requests run anything as the agent's user.
    """
    if not isinstance(runner, LiteRTRunnerConfig) or runner.delegate_path is None:
        return
    path = os.path.realpath(runner.delegate_path)
    if path in {os.path.realpath(p) for p in allowed} and not path.startswith(os.path.realpath(cache_root) + os.sep):
        runner.delegate_path = path  # what was checked is what loads, whatever the links do meanwhile
        return
    raise ProtocolError(ErrorCode.PROVIDER_MISSING,
                        f"delegate library {runner.delegate_path!r} was not given to the agent at start; allowed: "
                        f"{sorted(allowed) or 'none'} (devices.yaml delegate_path or --delegate-path)")


def check_inputs(tensors: Sequence[np.ndarray], names: Sequence[str]) -> None:
    """Job inputs: each with a leading sample axis holding at least one sample."""
    for name, tensor in zip(names, tensors):
        if tensor.ndim == 0 or tensor.shape[0] == 0:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"input {name!r} of shape {list(tensor.shape)} holds no sample "
                                                     "(the leading axis counts samples)")
