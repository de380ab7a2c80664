"""Latency measurement: warm-up discarded, then repeated runs timed with perf_counter_ns."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from qbench.protocols.messages import LatencyStats, TimingConfig


def measure(run: Callable[[int], object], config: TimingConfig, init_ms: float, on_run=None) -> LatencyStats:
    """Time ``run(i)`` (``i`` = run index, e.g. to cycle samples).

    The first call is timed alone (``first_ms``: lazy allocation and kernel selection
    happen there), then ``config.warmup`` untimed calls, then timed calls until both
    ``config.runs`` and ``config.min_seconds`` are reached, stopping at ``max_runs``
    or ``max_seconds``. Every timed run is returned in ``samples_ms``.
    """
    start = time.perf_counter_ns()
    run(0)
    first_ms = (time.perf_counter_ns() - start) / 1e6
    for i in range(config.warmup):
        run(i + 1)
    samples: list[float] = []
    deadline = time.perf_counter() + config.max_seconds
    began = time.perf_counter()
    i = 0
    while i < config.max_runs:
        t0 = time.perf_counter_ns()
        run(i)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        i += 1
        now = time.perf_counter()
        if on_run is not None:
            on_run(i)
        enough = i >= config.runs and now - began >= config.min_seconds
        if enough or now >= deadline:
            break
    return summarize(samples, init_ms=init_ms, first_ms=first_ms, warmup=config.warmup)


def summarize(samples_ms: list[float], init_ms: float, first_ms: float, warmup: int) -> LatencyStats:
    """Order statistics of the timed runs (percentiles by linear interpolation, std with ddof=0)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    return LatencyStats(
        init_ms=init_ms,
        first_ms=first_ms,
        warmup=warmup,
        runs=int(arr.size),
        min_ms=float(arr.min()),
        median_ms=float(np.median(arr)),
        mean_ms=float(arr.mean()),
        p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)),
        std_ms=float(arr.std()),
        samples_ms=[round(float(x), 6) for x in arr],
    )
