"""The anchor: a full per-layer analysis with ``onnxruntime.quantization.qdq_loss_debug``.

Runs the documented recipe on a float/int8 pair and the samples of an ``.npz`` file:
augment both models with every intermediate tensor as an output, collect the
activations of every sample, match float to QDQ activations, and compute the error
(SQNR, dB) of every matched layer. Prints one JSON line with the phase timings.

    python -m benchmarks.anchor FLOAT.onnx INT8.onnx DATA.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from .models import load_samples


class _Samples(CalibrationDataReader):
    def __init__(self, samples: list[dict]) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def analyse(float_path: Path, int8_path: Path, data_path: Path) -> dict:
    """Per-layer SQNR of every matched activation; returns timings and a summary."""
    samples = load_samples(data_path)
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        aug_float, aug_int8 = Path(tmp) / "float_aug.onnx", Path(tmp) / "int8_aug.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(aug_float))
        modify_model_output_intermediate_tensors(str(int8_path), str(aug_int8))
        phases["augment_s"] = time.perf_counter() - start
        t = time.perf_counter()
        float_acts = collect_activations(str(aug_float), _Samples(samples))
        qdq_acts = collect_activations(str(aug_int8), _Samples(samples))
        phases["collect_s"] = time.perf_counter() - t
    t = time.perf_counter()
    matching = create_activation_matching(qdq_acts, float_acts)
    # compute_activation_error reads match["float"] unconditionally, so unmatched layers go first.
    matched = {name: m for name, m in matching.items() if "float" in m}
    errors = compute_activation_error(matched)
    phases["compare_s"] = time.perf_counter() - t
    xmodel = [e["xmodel_err"] for e in errors.values() if math.isfinite(e.get("xmodel_err", math.nan))]
    return {
        "layers_matched": len(errors),
        "float_tensors": len(float_acts),
        "int8_tensors": len(qdq_acts),
        "samples": len(samples),
        "median_sqnr_db": sorted(xmodel)[len(xmodel) // 2] if xmodel else None,
        **phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_model", type=Path)
    parser.add_argument("int8_model", type=Path)
    parser.add_argument("data", type=Path)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    start = time.perf_counter()
    result = analyse(args.float_model, args.int8_model, args.data)
    result["total_s"] = time.perf_counter() - start
    print(json.dumps(result))


if __name__ == "__main__":
    main()
