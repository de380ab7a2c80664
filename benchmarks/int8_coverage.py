"""int8 coverage and int8-vs-float speed of qbench's own int8 models on real PP-LCNet/MobileNetV3-style models.

    .venv/bin/python -m benchmarks.int8_coverage                      # the four models, 3 rounds
    .venv/bin/python -m benchmarks.int8_coverage --models ppocr-cls --rounds 2 --threads 1

For each model: ``qbench run --device local`` quantizes it once (real calibration images, from
benchmarks/published.py), then every round runs ``qbench run --int8 <that model>`` again, which
times float and int8 one after the other in the same run (the machine is shared: only ratios
measured in one run are compared). Beside it, once per round, ONNX Runtime's own S8S8 QDQ model of
the same prepared float model (``quantize_static`` with int8 activations, the quantizer's default
form), which is what qbench made before it stored activations as uint8, and qbench's own model with its
HardSigmoid gates back in float (``restore_gates``: what qbench made before it wrote them as
quantized Adds). Appends a run (command, load averages, results) to ``benchmarks/int8_coverage.json``
and prints a Markdown table. Not a test: nothing fails on a missed goal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from qbench.host.quantize.hard_sigmoid import restore_gates

from . import published
from .report import append_run

HERE = Path(__file__).resolve().parent
MODELS = ("pplcnet-orientation", "ppocr-cls", "ppocr-v4-det", "picodet-layout", "oww-embedding")
TIMING = ["--runs", "10", "--warmup", "2", "--min-seconds", "0.5", "--profile-runs", "5", "--quiet", "--json"]


def _qbench(*args: str, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", "from qbench.host.cli.main import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"qbench {' '.join(args)}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _batch1(m, count: int, split: str) -> dict[str, np.ndarray]:
    """(N, 1, ...) arrays: one batch-1 model input per sample."""
    return published.data(m, count, split)


def _ort_s8s8(prepared: Path, out: Path, calib: dict[str, np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            count = len(next(iter(calib.values())))
            self._it = iter({k: v[i] for k, v in calib.items()} for i in range(count))

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def _float_gates(int8: Path, prepared: Path, out: Path) -> Path:
    """qbench's int8 model with its HardSigmoid gates in float again, as qbench made it before."""
    model = onnx.load(str(int8))
    restore_gates(model, onnx.load(str(prepared)))
    onnx.save(model, str(out))
    return out


def measure(name: str, rounds: int, work: Path, extra: tuple[str, ...] = ()) -> dict:
    m = published.model(name)
    folder = work / name
    folder.mkdir(parents=True)
    calib = _batch1(m, 16, "calib")
    np.savez(folder / "calib.npz", **calib)
    np.savez(folder / "eval.npz", **_batch1(m, 1, "eval"))
    common = ["--device", "local", "--input-shape", m.input_shape, "--data", "eval.npz", *TIMING, *extra]
    first = _qbench("run", str(m.path), "--calibration", "calib.npz", "--out", "made", *common, cwd=folder)
    report = json.loads((folder / first["report"]).read_text())
    prepared, int8 = Path(report["models"]["float"]["path"]), Path(report["models"]["int8"]["path"])
    s8s8 = _ort_s8s8(prepared, folder / "ort_s8s8.onnx", calib)
    float_gates = _float_gates(int8, prepared, folder / "float_gates.onnx")
    rows: dict[str, list] = {"qbench": [first], "float_gates": [], "ort_s8s8": []}
    loads = []
    for index in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        if index:
            rows["qbench"].append(_qbench("run", str(prepared), "--int8", str(int8), "--out", f"q{index}", *common,
                                          cwd=folder))
        rows["float_gates"].append(_qbench("run", str(prepared), "--int8", str(float_gates), "--out", f"g{index}",
                                           *common, cwd=folder))
        rows["ort_s8s8"].append(_qbench("run", str(prepared), "--int8", str(s8s8), "--out", f"s{index}", *common,
                                        cwd=folder))
    result = {"model": name, "rounds": rounds, "options": list(extra), "load_average": loads}
    for kind, runs in rows.items():
        result[kind] = {"int8_coverage": [r.get("int8_coverage") for r in runs],
                        "speedup": [r.get("speedup") for r in runs],
                        "speedup_median": statistics.median(r["speedup"] for r in runs),
                        "output_psnr_db": [r.get("output_psnr_db") for r in runs]}
    result["float_nodes"] = report["int8_coverage"].get("float_nodes", [])
    return result


def table(results: list[dict]) -> str:
    lines = ["| model | int8 coverage (kernel time) | int8 vs float speed, median of rounds (each) | "
             "float HardSigmoid gates: speed | ORT S8S8 model: coverage, speed | output PSNR (float gates) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        q, g, s = r["qbench"], r["float_gates"], r["ort_s8s8"]
        each = ", ".join(f"{x:.2f}" for x in q["speedup"])
        lines.append(f"| {r['model']} | {min(q['int8_coverage']):.1%} | {q['speedup_median']:.2f}x ({each}) | "
                     f"{g['speedup_median']:.2f}x | {min(s['int8_coverage']):.1%}, {s['speedup_median']:.2f}x | "
                     f"{q['output_psnr_db'][0]:.1f} dB ({g['output_psnr_db'][0]:.1f} dB) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, help="runtime threads on the agent (default: the device's)")
    parser.add_argument("--json", type=Path, default=HERE / "int8_coverage.json")
    args = parser.parse_args(argv)
    extra = ("--threads", str(args.threads)) if args.threads else ()
    with tempfile.TemporaryDirectory(prefix="qbench-int8cov-") as tmp:
        results = [measure(name, args.rounds, Path(tmp), extra) for name in args.models.split(",")]
    append_run(args.json, "benchmarks.int8_coverage", argv, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
