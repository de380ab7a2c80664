"""``qbench fix`` on a published model, timed, its final output PSNR recomputed with plain ONNX Runtime.

    python -m benchmarks.fix_published ppocr-v4-det --target-psnr 28 [--calib 8 --eval 4] [--out DIR] [-- FIX OPTIONS]

Writes real-looking calibration and evaluation samples (benchmarks.published), runs ``qbench fix``
as a user would, and prints one JSON line: wall seconds, whether the target was met, the chosen
configuration, the published output PSNR and the same figure computed here from the float and final
int8 models with plain onnxruntime sessions and numpy (peak = max|float| pooled over samples).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import published as P
from benchmarks.qbench_cli import QBENCH


def plain_psnr(float_path: Path, int8_path: Path, eval_npz: Path) -> float:
    """The lowest output PSNR over outputs, pooled over the samples, from plain ORT sessions."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (float_path, int8_path)]
    data = dict(np.load(eval_npz))
    feeds = [{k: v[i] for k, v in data.items()} for i in range(len(next(iter(data.values()))))]
    outs = [[np.stack(o).astype(np.float64) for o in zip(*(s.run(None, f) for f in feeds))] for s in sessions]
    worst = math.inf
    for f, q in zip(*outs):
        mse = float(np.mean((f - q) ** 2))
        if mse > 0:
            worst = min(worst, 10 * math.log10(float(np.max(np.abs(f))) ** 2 / mse))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--target-psnr", type=float, required=True)
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--eval", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/qbench-fix-published"))
    parser.add_argument("extra", nargs="*", help="more qbench fix options (after --)")
    args = parser.parse_args(argv)
    m = P.model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, count in (("calib", args.calib), ("eval", args.eval)):  # qbench wants (N, *input_shape)
        np.savez(args.out / f"{split}.npz", **{k: v[:, None] for k, v in P.samples(m, count, split=split).items()})
    fix_out = args.out / "fix"
    cmd = [QBENCH, "fix", str(m.path), "--input-shape", m.input_shape, "--target-psnr", str(args.target_psnr),
           "--data", str(args.out / "eval.npz"), "--calibration", str(args.out / "calib.npz"), "--out", str(fix_out),
           "--db", str(args.out / "results.sqlite"), "--json", "--quiet", *args.extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):
        sys.stderr.write(done.stderr)
        return done.returncode
    report = json.loads((fix_out / "report.json").read_text())
    section = report["fix"]
    print(json.dumps({
        "model": args.model, "seconds": round(seconds, 1), "met": section["met"], "method": section["method"],
        "trials": section["trials"], "chosen": {k: section["chosen"][k] for k in
                                                ("family", "float_blocks", "int16_blocks", "int8_share")},
        "baseline_psnr_db": next(r["output_psnr_db"] for r in section["pareto"] if r["family"] == "baseline"),
        "output_psnr_db": report["summary"]["output_psnr_db"],
        "plain_ort_psnr_db": round(plain_psnr(fix_out / "float.prepared.onnx", fix_out / "model.int8.onnx",
                                              args.out / "eval.npz"), 4),
        "latency_int8_ms": report["latency"]["int8"]["median_ms"],
        "latency_float_ms": report["latency"]["float"]["median_ms"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
