"""Realistic qbench.report/1 dicts for the tests of what consumes reports (HTML, store, gates, exports)."""

from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np

OP_CYCLE = ("Conv", "Relu", "Conv", "Add", "Relu", "MaxPool", "Conv", "Sigmoid", "Mul", "Concat")
PROFILE_RUNS = 10
HISTOGRAM_BINS = 64


def make_report(n_layers: int = 50, seed: int = 0, model_path: str = "/models/resnet_tiny.onnx",
                device: str = "local", drops_at: tuple[int, ...] = (17, 38), profile: bool = True,
                histograms: bool = True, gates: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A report like `qbench run` writes: layers with a decaying PSNR, drops, samples, a profile.

    ``histograms`` adds every layer's activation ``histogram`` and ``weights`` for the Conv layers.
    """
    rng = np.random.default_rng(seed)
    layers = []
    psnr = 48.0
    for i in range(n_layers):
        op = OP_CYCLE[i % len(OP_CYCLE)]
        exact = op == "MaxPool" and i < 10
        psnr -= float(rng.uniform(0.1, 0.5))
        drop = i in drops_at
        if drop:
            psnr -= 9.0
        value = None if exact else round(psnr, 3)
        peak = float(rng.uniform(1.0, 8.0))
        layers.append({
            "index": i, "name": f"/backbone/block{i // 4}/{op.lower()}_{i}/output_0", "op_type": op,
            "psnr_db": value, "sqnr_db": None if exact else round(psnr - 4.0, 3),
            "mse": 0.0 if exact else peak ** 2 / 10 ** (psnr / 10), "peak": peak,
            "max_abs_error": 0.0 if exact else peak / 50, "float_min": -peak / 3, "float_max": peak, "exact": exact,
            "drop": drop, "drop_db": 9.2 if drop else None,
            "local_psnr_db": None if exact else round(psnr + float(rng.uniform(2, 10)), 3),
            "parents": [] if i == 0 else [f"/backbone/block{(i - 1) // 4}/{OP_CYCLE[(i - 1) % 10].lower()}_{i - 1}"
                                          "/output_0"],
        })
    finite = [layer for layer in layers if layer["psnr_db"] is not None]
    worst = sorted(finite, key=lambda layer: layer["psnr_db"])[:5]
    samples_f = (10.0 + rng.gamma(2.0, 0.3, 200)).round(4).tolist()
    samples_q = (4.0 + rng.gamma(2.0, 0.2, 200)).round(4).tolist()
    report: dict[str, Any] = {
        "schema": "qbench.report/1", "created": "2025-01-02T03:04:05+00:00", "qbench_version": "0.1.0",
        "device": {"name": device, "arch": "x86_64", "system": "Linux", "python": "3.11.2",
                   "runtime": "onnxruntime", "runtime_version": "1.31.1", "providers": ["CPUExecutionProvider"],
                   "emulated": device == "local", "cpu_count": 2, "total_memory_mb": 24000},
        "models": {"float": {"path": model_path, "sha256": "ab" * 32, "size_bytes": 4_400_000},
                   "int8": {"path": model_path.replace(".onnx", ".int8.onnx"), "sha256": "cd" * 32,
                            "size_bytes": 1_200_000}},
        "outputs": [
            {"name": "logits", "psnr_db": round(finite[-1]["psnr_db"] + 3, 3), "sqnr_db": 20.1, "mse": 1e-3,
             "max_abs_error": 0.08, "peak": 9.0, "exact": False, "kind": "float"},
            {"name": "class_id", "psnr_db": None, "sqnr_db": None, "mse": 0.0, "max_abs_error": 0.0, "peak": 9.0,
             "exact": True, "kind": "exact", "mismatches": 0},
        ],
        "layers": layers,
        "unmatched": [{"name": "/backbone/shape_0", "op_type": "Shape", "reason": "not a float tensor"}],
        "latency": {
            "float": _stats(samples_f), "int8": _stats(samples_q),
            "speedup": round(float(np.median(samples_f) / np.median(samples_q)), 4),
        },
        "memory": {"float": {"peak_mb": 180.0, "baseline_mb": 60.0, "delta_mb": 120.0},
                   "int8": {"peak_mb": 95.0, "baseline_mb": 60.0, "delta_mb": 35.0}, "ratio": round(95 / 180, 4)},
        "summary": {"output_psnr_db": round(finite[-1]["psnr_db"] + 3, 3), "speedup": None, "memory_ratio": None,
                    "worst_layers": [layer["name"] for layer in worst],
                    "drops": [layer["name"] for layer in layers if layer["drop"]]},
        "settings": {"argv": ["qbench", "run", model_path], "samples": 8, "calibration_method": "minmax",
                     "input_shapes": {"x": [1, 3, 64, 64]}, "threads": 2, "providers": ["CPUExecutionProvider"],
                     "drop_db": 6.0},
    }
    report["summary"]["speedup"] = report["latency"]["speedup"]
    report["summary"]["memory_ratio"] = report["memory"]["ratio"]
    if profile:
        report["profile"] = {
            "float": _op_profile(rng, sorted(set(OP_CYCLE)), 10.0),
            "int8": _op_profile(rng, ["QLinearConv", "QuantizeLinear", "DequantizeLinear", "Relu", "Add"], 4.0),
            "runs": PROFILE_RUNS,
        }
    if histograms:
        for layer in layers:
            peak = layer["float_max"]
            layer["histogram"] = _histogram(-peak / 6, peak * 0.9, rng.gamma(2.0, peak / 6, 4000) - peak / 5)
        report["weights"] = [_weight(rng, layer) for layer in layers if layer["op_type"] == "Conv"]
    if gates is not None:
        report["gates"] = gates
    return report


def _op_profile(rng: np.random.Generator, ops: list[str], per_run_ms: float) -> list[dict[str, Any]]:
    """Entries as the agent sends them: per (op type, provider), totals over PROFILE_RUNS runs."""
    means = rng.dirichlet(np.ones(len(ops))) * per_run_ms
    entries = [{"op_type": op, "provider": "CPUExecutionProvider", "total_ms": float(m * PROFILE_RUNS),
                "calls": 3 * PROFILE_RUNS, "mean_ms": float(m), "share": float(m / per_run_ms)}
               for op, m in zip(ops, means)]
    return sorted(entries, key=lambda e: -e["total_ms"])


def _histogram(lo: float, hi: float, values: np.ndarray) -> dict[str, Any]:
    """The report layout: HISTOGRAM_BINS bins over [lo, hi] and the clipped counts at both ends."""
    step = (hi - lo) / 255
    quantized = np.clip(np.round((values - lo) / step), 0, 255) * step + lo
    edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)

    def counts(v: np.ndarray) -> list[int]:
        inside = np.histogram(v[(v >= lo) & (v <= hi)], edges)[0]
        return [int((v < lo).sum()), *inside.tolist(), int((v > hi).sum())]

    return {"range": [float(lo), float(hi)], "float": counts(values), "int8": counts(quantized)}


def _weight(rng: np.random.Generator, layer: dict[str, Any]) -> dict[str, Any]:
    values = rng.laplace(0.0, 0.05, 2000)
    bound = float(np.abs(values).max())
    return {"name": layer["name"].replace("/output_0", "/weight"), "layer": layer["name"],
            "psnr_db": float(rng.uniform(35, 50)), "channel_psnr_db": rng.uniform(30, 55, 16).round(2).tolist(),
            "histogram": _histogram(-bound, bound, values)}


def _stats(samples: list[float]) -> dict[str, Any]:
    array = np.asarray(samples)
    return {"init_ms": 35.0, "first_ms": float(array.max() * 2), "warmup": 5, "runs": len(samples),
            "min_ms": float(array.min()), "median_ms": float(np.median(array)), "mean_ms": float(array.mean()),
            "p90_ms": float(np.percentile(array, 90)), "p99_ms": float(np.percentile(array, 99)),
            "std_ms": float(array.std()), "samples_ms": samples}


def variant(report: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of a report with top-level keys replaced."""
    other = copy.deepcopy(report)
    other.update(changes)
    return other
