"""The latency reference: a bare ``session.run`` loop in a fresh process.

Session options mirror qbench's ONNX Runtime worker (``intra_op_num_threads`` = threads,
``inter_op_num_threads`` = 1, ``ORT_ENABLE_ALL``, CPU provider) and so does the
schedule: one untimed first run, ``warmup`` untimed runs, then timed runs (cycling
over the samples) until both ``runs`` and ``min_seconds`` are reached.

    python -m benchmarks.bare_latency MODEL.onnx DATA.npz --threads 2 --runs 50 --min-seconds 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .models import load_samples

_MAX_SECONDS = 120.0


def measure(model: Path, data: Path, threads: int, runs: int, min_seconds: float, warmup: int = 5) -> dict:
    """Median and spread of ``session.run`` wall times, in ms."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    samples = load_samples(data)
    for i in range(1 + warmup):
        session.run(None, samples[i % len(samples)])
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < runs or time.perf_counter() - began < min_seconds:
        feed = samples[len(times) % len(samples)]
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if time.perf_counter() - began > _MAX_SECONDS:
            break
    arr = np.asarray(times)
    return {"runs": len(times), "median_ms": float(np.median(arr)), "min_ms": float(arr.min()),
            "p90_ms": float(np.percentile(arr, 90))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.data, args.threads, args.runs, args.min_seconds, args.warmup)))


if __name__ == "__main__":
    main()
