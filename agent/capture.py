"""Per-layer capture on the device: budget grouping and error accumulators.

Only numbers leave the device: for each float/int8 tensor pair the accumulators of
:class:`PairStats`, summed over every element of every sample (per chunk in float32,
across chunks in float64: see :mod:`qbench.agent.reduce`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from qbench.protocols.messages import CapturePair, PairStats, QParams

from . import reduce
from .reduce import CHUNK

#: histograms count (bins + 2) x 256 joint codes per chunk: keep that table small
MAX_HISTOGRAM_BINS = 4096


def plan_groups(sizes: list[int | None], budget_bytes: int) -> list[list[int]]:
    """Split pair indices into consecutive groups whose summed size fits the budget.

    Consecutive indices keep a group's tensors close in the graph. A pair larger than
    the budget gets a group of its own (it cannot be split); an unknown size counts as
    the largest known size. Every index appears in exactly one group.
    """
    known = [s for s in sizes if s is not None]
    fallback = max(known) if known else 0
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, size in enumerate(sizes):
        size = fallback if size is None else size
        if current and used + size > budget_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        groups.append(current)
    return groups


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """real = (q - zero_point) * scale, per channel along ``qp.axis`` when scale has several values."""
    scale, zero = _broadcast(qp, q.ndim)
    return (q.astype(np.float64) - zero) * scale


def _broadcast(qp: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(qp.scale, dtype=np.float64)
    zero = np.asarray(qp.zero_point, dtype=np.float64)
    if scale.size > 1:
        axis = 1 if qp.axis is None else qp.axis  # ONNX's default channel axis
        shape = [1] * ndim
        shape[axis % ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return scale, zero


class PairAccumulator:
    """Sums over samples for one pair; :meth:`stats` gives the wire form.

    A sample is reduced chunk by chunk (:mod:`qbench.agent.reduce`): :meth:`tasks` gives
    the chunk reductions, which may run on any thread, and :meth:`merge` adds their
    results, in order, so that the sums do not depend on how they were scheduled.

    Args:
        pair: what to compare.
        histogram_bins: > 0: value histograms of both tensors (per-tensor quantized pairs only).
    """

    def __init__(self, pair: CapturePair, histogram_bins: int = 0):
        self.pair = pair
        self.histogram_bins = histogram_bins
        self.s = PairStats()
        if pair.qparams is not None and not pair.exact:
            self.s.local_sum_sq_err = 0.0
            self.s.clipped = 0
        self._kernel: reduce.Kernel | None = None
        self._kernel_key: tuple | None = None
        self._hist_float: np.ndarray | None = None
        self._codes: np.ndarray | None = None
        self._code_dtype: np.dtype | None = None
        self._hist_broken = False

    def update(self, f: np.ndarray, q: np.ndarray) -> None:
        """Add one sample: ``f`` from the float model, ``q`` from the int8 model (raw)."""
        for task in self.tasks(f, q):
            self.merge(task())

    def tasks(self, f: np.ndarray, q: np.ndarray) -> list[Callable[[], reduce.Partial]]:
        """The chunk reductions of one sample; none when the sample cannot be compared (recorded in ``error``)."""
        if self.s.error:
            return []
        if f.shape != q.shape:
            self.s.error = f"shapes differ: float {list(f.shape)} vs int8 {list(q.shape)}"
            return []
        key = (f.shape, f.dtype)
        if key != self._kernel_key:
            self._kernel, self._kernel_key = reduce.Kernel(self.pair, f.shape, f.dtype, self.histogram_bins), key
        if self._kernel.bins is not None:
            self._code_dtype = q.dtype
        ff, qf = f.reshape(-1), q.reshape(-1)
        return [functools.partial(_reduce_chunk, self._kernel, ff[i: i + CHUNK], qf[i: i + CHUNK], i)
                for i in range(0, ff.size, CHUNK)]

    def merge(self, p: reduce.Partial) -> None:
        """Add one chunk's reduction."""
        s = self.s
        s.count += p.count
        s.mismatches += p.mismatches
        if self.pair.exact:
            return
        s.float_nan, s.float_inf = s.float_nan + p.float_nan, s.float_inf + p.float_inf
        s.int8_nan, s.int8_inf = s.int8_nan + p.int8_nan, s.int8_inf + p.int8_inf
        s.sum_sq_err += p.sum_sq_err
        s.sum_sq_float += p.sum_sq_float
        s.max_abs_err = max(s.max_abs_err, p.max_abs_err)
        s.max_abs_float = max(s.max_abs_float, -p.float_min, p.float_max)
        s.float_min = p.float_min if s.float_min is None else min(s.float_min, p.float_min)
        s.float_max = p.float_max if s.float_max is None else max(s.float_max, p.float_max)
        if s.local_sum_sq_err is not None:
            s.local_sum_sq_err += p.local_sum_sq_err
            s.clipped += p.clipped
        if p.hist_float is not None and not self._hist_broken:
            self._hist_float = p.hist_float if self._hist_float is None else self._hist_float + p.hist_float
            self._codes = p.codes if self._codes is None else self._codes + p.codes
        elif self._kernel is not None and self._kernel.bins is not None:
            self._hist_broken = True  # a chunk went uncounted: no histogram rather than a partial one

    def stats(self) -> PairStats:
        """The wire form. The JSON carries no NaN or infinity: a sum that is not finite is sent as 0,
        with the NaN and infinity counts of each side saying why (``float_nan`` ...)."""
        s = self.s
        if s.float_nan or s.float_inf or s.int8_nan or s.int8_inf:
            s.error = s.error or (f"non-finite values: float model {s.float_nan} NaN, {s.float_inf} inf; "
                                  f"int8 model {s.int8_nan} NaN, {s.int8_inf} inf")
        for name in ("sum_sq_err", "sum_sq_float", "max_abs_err", "max_abs_float", "local_sum_sq_err"):
            value = getattr(self.s, name)
            if value is not None and not math.isfinite(value):
                self.s.error = self.s.error or f"non-finite values ({name})"
                setattr(self.s, name, 0.0)
        for name in ("float_min", "float_max"):  # the wire's JSON carries no NaN or infinity
            if getattr(self.s, name) is not None and not math.isfinite(getattr(self.s, name)):
                setattr(self.s, name, None)
        if self._hist_float is not None and not self._hist_broken:
            self.s.hist_range = [float(v) for v in self._kernel.range]
            self.s.hist_float = [int(c) for c in self._hist_float]
            self.s.hist_int8 = [int(c) for c in self._kernel.int8_histogram(self._codes, self._code_dtype)]
        return self.s


def _reduce_chunk(kernel: reduce.Kernel, f: np.ndarray, q: np.ndarray, start: int) -> reduce.Partial:
    return kernel.reduce(f, q, start, reduce.thread_scratch())


class Reducer:
    """Runs the chunk reductions of many pairs on ``threads`` threads (numpy releases the GIL in its loops).

    Results are merged in submission order, so the sums are the same for any thread count.
    """

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="reduce") if threads > 1 else None

    def reduce(self, items: Iterable[tuple[PairAccumulator, np.ndarray, np.ndarray]]) -> None:
        """Add one sample of every (accumulator, float tensor, int8 tensor) in ``items``."""
        jobs = [(acc, task) for acc, f, q in items for task in acc.tasks(f, q)]
        if self._pool is None:
            for acc, task in jobs:
                acc.merge(task())
            return
        futures = [self._pool.submit(task) for _, task in jobs]
        for (acc, _), future in zip(jobs, futures):
            acc.merge(future.result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class Phases:
    """Wall seconds per phase name: ``with phases("load"): ...`` adds to ``seconds["load"]``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def reduce_threads(runtime_threads: int | None) -> int:
    """Threads for the reductions: as many as the runtime may use, else the CPUs this process may run on."""
    if runtime_threads:
        return runtime_threads
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
