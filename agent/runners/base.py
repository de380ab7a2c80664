"""The runner interface: one implementation per runtime.

The base class owns state checks and input validation; a runtime implements only
the ``*_impl`` methods. Runners are used inside a worker process, one model each.
"""

from __future__ import annotations

import abc
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from qbench.protocols.messages import ErrorCode, ProtocolError, RunnerConfig


@dataclass
class TensorSpec:
    """A model input or output as the runtime sees it; ``None`` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: list[int | None]


@dataclass
class OpTime:
    """Kernel time of one operator type on one provider, over the profiled runs.

    Attributes:
        op_type: the kernel's operator type as the runtime names it (``QLinearConv``, ``Conv``...).
        provider: the execution provider or delegate that ran it.
        total_ms: summed kernel time over every profiled run.
        calls: kernel invocations over every profiled run.
        mean_ms: ``total_ms / runs``: this op type's kernel time per inference.
        share: ``total_ms`` over the sum of every op type's ``total_ms`` (0..1).
        median_ms: the median over the profiled runs of this op type's kernel time in one run; unlike
            ``mean_ms``, one slow run (a page fault, a preempted thread) does not move it. None when the
            runtime does not tell runs apart.
    """

    op_type: str
    provider: str
    total_ms: float
    calls: int
    mean_ms: float
    share: float
    median_ms: float | None = None


class ProfilingUnavailable(Exception):
    """The runtime exposes no per-op profiler, or its profile cannot be read; the message says why."""


def op_times(kernels: Iterable[tuple[str, str, float, int]], runs: int) -> list[OpTime]:
    """Totals per (op type, provider) from ``(op type, provider, microseconds, run index)`` kernel records
    (run index 0..runs-1), largest first."""
    per_run: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * runs)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    for op_type, provider, micros, run in kernels:
        per_run[(op_type, provider)][run] += micros
        calls[(op_type, provider)] += 1
    overall = sum(sum(times) for times in per_run.values())
    times = [OpTime(op_type=op, provider=provider, total_ms=sum(us) / 1000.0, calls=calls[(op, provider)],
                    mean_ms=sum(us) / 1000.0 / runs, share=sum(us) / overall if overall else 0.0,
                    median_ms=statistics.median(us) / 1000.0)
             for (op, provider), us in per_run.items()]
    return sorted(times, key=lambda t: (-t.total_ms, t.op_type, t.provider))


class Runner(abc.ABC):
    """Loads one model and runs it.

    Args:
        model_path: the model file in the agent's cache.
        config: providers/delegates, threads, optimization level.
        extra_outputs: intermediate tensors to expose as outputs (the capture pass).
            Exposing them can block fusions, so timing runs never pass any.

    :attr:`deployed_graph`, set before :meth:`load`, is the graph the runtime deployed for ``model_path``
    as another runner wrote it (:meth:`save_deployed_graph`): the extra outputs are then read from
    that graph, run as it is, so that exposing them changes nothing the runtime computes.

    After :meth:`load`, :attr:`unobservable` lists the extra outputs the runtime cannot expose
    (inside a delegate partition), and :attr:`fused` the ones the deployed graph no longer has, with
    why (``"fused into QLinearConv <node>"``); :meth:`infer` leaves both out. An extra output that the
    runtime holds in a layout only its counterpart's shape can tell comes out of :meth:`infer` as held;
    :meth:`in_layout_of` puts it back.
    """

    def __init__(self, model_path: str, config: RunnerConfig, extra_outputs: Sequence[str] = ()):
        self.model_path = model_path
        self.config = config
        self.extra_outputs = list(extra_outputs)
        self.deployed_graph: str | None = None
        self.unobservable: list[str] = []
        self.fused: dict[str, str] = {}
        self._loaded = False

    def save_deployed_graph(self, path: str) -> bool:
        """Before :meth:`load`: have the runtime write the graph it deploys to ``path``.

        Returns False when this runtime cannot; then :attr:`deployed_graph` stays None after loading.
        Otherwise :attr:`deployed_graph` is ``path`` once the graph was written (None if writing failed).
        """
        return False

    def load(self) -> None:
        """Create the session/interpreter. Raises ProtocolError on a bad model or config."""
        self._load_impl()
        self._loaded = True

    def inputs(self) -> list[TensorSpec]:
        self._check_loaded()
        return self._inputs_impl()

    def outputs(self) -> list[TensorSpec]:
        """The model's own outputs (not the extra ones)."""
        self._check_loaded()
        return self._outputs_impl()

    def providers_used(self) -> list[str]:
        """What actually ran the graph: execution providers or delegates."""
        self._check_loaded()
        return self._providers_used_impl()

    def delegation(self) -> dict[str, Any]:
        """What a delegate took: ``{delegate, delegated_ops, total_ops, fraction}``, {} without delegates."""
        self._check_loaded()
        return {}

    def in_layout_of(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
        """Extra output ``name`` in the layout of its counterpart shaped ``shape``: ``(value, "")``, or
        ``(None, why)`` when the layout cannot be told. Runtimes that hold every tensor as the model
        says return it as it is."""
        return value, ""

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Returns the model outputs and every extra output, by name.

        IMPORTANT: returned arrays may be reused by the next call; copy to keep them.
        """
        self._check_loaded()
        expected = {spec.name: spec for spec in self._inputs_impl()}
        if set(feeds) != set(expected):
            raise ProtocolError(
                ErrorCode.BAD_INPUT, f"inputs {sorted(feeds)} do not match the model's {sorted(expected)}"
            )
        for name, spec in expected.items():
            arr = feeds[name]
            if len(arr.shape) != len(spec.shape) or any(
                d is not None and d != a for d, a in zip(spec.shape, arr.shape)
            ):
                raise ProtocolError(
                    ErrorCode.BAD_INPUT, f"input {name!r}: shape {list(arr.shape)} does not fit {spec.shape}"
                )
        return self._infer_impl(feeds)

    def infer_unchecked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`infer` without the input checks, for timed loops over feeds already checked once."""
        return self._infer_impl(feeds)

    def profile(self, feeds: Sequence[Mapping[str, np.ndarray]], runs: int,
                on_run: Callable[[int], None] | None = None) -> list[OpTime]:
        """Kernel time per op type over ``runs`` runs, in a separate profiling session.

        Profiling slows a runtime down, so it never happens in the session that
        :meth:`infer` times. The profiling session runs once more first (warm-up:
        allocations, lazy kernel set-up) and that run's kernels are dropped. Feeds
        are cycled, as in the timed loop. ``on_run(i)`` is called after the i-th
        profiled run (1 to ``runs``; not after the warm-up).

        Raises:
            ProfilingUnavailable: the runtime has no per-op profiler here.
        """
        self._check_loaded()
        if runs < 1 or not feeds:
            raise ValueError("profile needs at least one run and one feed")
        return self._profile_impl(feeds, runs, on_run or (lambda _: None))

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("runner used before load()")

    @abc.abstractmethod
    def _load_impl(self) -> None: ...

    @abc.abstractmethod
    def _inputs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _outputs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _providers_used_impl(self) -> list[str]: ...

    @abc.abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _profile_impl(self, feeds: Sequence[Mapping[str, np.ndarray]], runs: int,
                      on_run: Callable[[int], None]) -> list[OpTime]: ...
