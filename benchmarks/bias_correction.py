"""What ``--bias-correction`` does to the output PSNR of qbench's own int8 models of real published models.

    .venv/bin/python -m benchmarks.bias_correction                 # every published ONNX float model
    .venv/bin/python -m benchmarks.bias_correction --models oww-hey-jarvis,ppocr-v4-rec

For each model, ``qbench run --accuracy-only`` quantizes it twice on the same real-looking
calibration samples (benchmarks/published.py), without and with ``--bias-correction``, and measures
both on the same evaluation samples. The corrected model's output PSNR is computed again here with
plain ONNX Runtime sessions and numpy (``fix_published.plain_psnr``: peak = max|float| pooled over
the samples), beside qbench's figure. Writes ``benchmarks/bias_correction.json`` (or ``--out``) and prints a
Markdown table. Not a test: a model the correction makes worse is a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import published
from .fix_published import plain_psnr
from .qbench_cli import QBENCH

HERE = Path(__file__).resolve().parent
MODELS = ("oww-hey-jarvis", "oww-alexa", "oww-embedding", "ppocr-cls", "pplcnet-orientation", "ddddocr-rec",
          "ppocr-v4-rec", "ppocr-v6-rec", "yolov8n-nudenet", "yolox-det", "picodet-layout", "ppocr-v4-det",
          "ppocr-v6-det")
# (calibration, evaluation) samples; 16 and 16 otherwise. The wake-word heads as the README's diagnosis
# measured them; with 16 calibration windows their shift estimates are poorer (the README has both).
SAMPLES = {"oww-hey-jarvis": (32, 16), "oww-alexa": (32, 16),
           "yolox-det": (8, 4), "picodet-layout": (8, 4), "ppocr-v4-det": (8, 4), "ppocr-v6-det": (8, 4)}


def _run(model, folder: Path, out: str, *extra: str) -> dict:
    cmd = [QBENCH, "run", str(model.path),
           "--input-shape", model.input_shape, "--data", "eval.npz", "--calibration", "calib.npz", "--accuracy-only",
           "--histogram-bins", "0", "--quiet", "--json", "--out", out, *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{model.name}: {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads((folder / out / "report.json").read_text())
    return {"psnr_db": report["summary"]["output_psnr_db"], "wall_s": round(time.perf_counter() - start, 2),
            "report": report}


def measure(name: str, work: Path, calib_override: int | None = None) -> dict:
    m = published.model(name)
    folder = work / name
    folder.mkdir(parents=True)
    calib, count = (calib_override, SAMPLES.get(name, (16, 16))[1]) if calib_override else SAMPLES.get(name, (16, 16))
    np.savez(folder / "calib.npz", **published.data(m, calib, "calib"))
    np.savez(folder / "eval.npz", **published.data(m, count, "eval"))
    plain = _run(m, folder, "plain")
    corrected = _run(m, folder, "corrected", "--bias-correction")
    section = corrected["report"]["bias_correction"]
    recomputed = plain_psnr(Path(corrected["report"]["models"]["float"]["path"]), folder / "corrected" / "model.int8.onnx",
                            folder / "eval.npz")
    return {"model": name, "calibration_samples": calib, "eval_samples": count,
            "plain_psnr_db": plain["psnr_db"], "corrected_psnr_db": corrected["psnr_db"],
            "corrected_plain_ort_psnr_db": round(recomputed, 4), "gain_db": round(corrected["psnr_db"] - plain["psnr_db"], 2),
            "layers_corrected": section["layers"], "layers_skipped": len(section["skipped"]),
            "wall_s": {"plain": plain["wall_s"], "corrected": corrected["wall_s"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calib", type=int, help="calibration samples for every model (default: per model)")
    parser.add_argument("--out", type=Path, default=HERE / "bias_correction.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qbench-bias-") as tmp:
        for name in args.models.split(","):
            if not Path(published.model(name).path).is_file():
                print(f"{name}: not fetched (python -m benchmarks.published fetch)", file=sys.stderr)
                continue
            rows.append(measure(name, Path(tmp), args.calib))
            print(json.dumps(rows[-1]), file=sys.stderr)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print("| model | samples (calib/eval) | min/max int8 | + bias correction | gain | plain ORT on it | layers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['calibration_samples']}/{r['eval_samples']} | {r['plain_psnr_db']:.2f} dB | "
              f"{r['corrected_psnr_db']:.2f} dB | {r['gain_db']:+.2f} dB | {r['corrected_plain_ort_psnr_db']:.2f} dB | "
              f"{r['layers_corrected']} ({r['layers_skipped']} left) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
