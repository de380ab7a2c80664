"""Is the sensitive-layer ranking's top where the device finds the damage? Checked on real published models.

    .venv/bin/python -m benchmarks.ranking_check                          # the default models
    .venv/bin/python -m benchmarks.ranking_check --models ppocr-v6-tiny-det --blocks 16

For each model: ``qbench run --accuracy-only`` quantizes it (real calibration data from
benchmarks/published.py) and ranks its layers from the per-layer figures; ``qbench sensitivity``
with the same data (so the same int8 model) then measures every block of ops alone int8 on the
device. The block holding the
ranking's top layer is placed among the blocks ordered by their only-int8 output PSNR (1 = the block
whose int8 alone costs the output most). A top in a block near 1 is a ranking that points where the
damage is. Appends a run to ``benchmarks/ranking_check.json`` and prints a Markdown table. Not a
test: nothing fails on a miss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from . import published
from .report import append_run

HERE = Path(__file__).resolve().parent
MODELS = ("ppocr-v4-det", "ppocr-v5-det", "ppocr-v6-tiny-det", "ppocr-seal-det", "pplcnet-orientation",
          "yolov8n-nudenet", "mp-face_landmark", "mp-face_detection_full_range_sparse", "mp-iris_landmark",
          "oww-melspectrogram-tflite")
COMMON = ["--device", "local", "--histogram-bins", "0", "--quiet"]


def _qbench(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from qbench.host.cli.main import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"qbench {' '.join(args)}: {proc.stderr.strip().splitlines()[-1:]}")


def block_of_layers(report: dict) -> dict[str, int]:
    """Layer name -> the sweep block holding the op that computes it (blocks are runs of the float graph's ops)."""
    float_path = report["models"]["float"]["path"]
    blocks = report["sensitivity"]["blocks"]
    if float_path.endswith(".onnx"):
        nodes = onnx.load(float_path).graph.node
        order = {node.name: k for k, node in enumerate(nodes)}
        user = {layer.get("prepared_name", layer["name"]): layer["name"] for layer in report["layers"]}
        return {user[out]: b["block"] for b in blocks for node in nodes[order[b["first_op"]]:order[b["last_op"]] + 1]
                for out in node.output if out in user}
    names = [layer["name"] for layer in report["layers"]]  # a TFLite op is named by its output tensor
    at = {name: k for k, name in enumerate(names)}
    return {name: b["block"] for b in blocks if b["first_op"] in at and b["last_op"] in at
            for name in names[at[b["first_op"]]:at[b["last_op"]] + 1]}


def measure(name: str, blocks: int, work: Path) -> dict:
    m = published.model(name)
    folder = work / name
    folder.mkdir(parents=True)
    np.savez(folder / "calib.npz", **published.data(m, 8, "calib"))
    np.savez(folder / "eval.npz", **published.data(m, 4, "eval"))
    data = ["--input-shape", m.input_shape, "--data", "eval.npz"]
    data = [*data, "--calibration", "calib.npz"]
    _qbench("run", str(m.path), *data, "--accuracy-only", "--out", "run", *COMMON, cwd=folder)
    run = json.loads((folder / "run" / "report.json").read_text())
    _qbench("sensitivity", str(m.path), *data, "--blocks", str(blocks), "--out", "sweep", *COMMON, cwd=folder)
    sweep = json.loads((folder / "sweep" / "report.json").read_text())
    rows = sweep["sensitivity"]["blocks"]
    ordered = sorted(rows, key=lambda b: (b["only_int8_psnr_db"] is None, b["only_int8_psnr_db"] or 0.0))
    place = {b["block"]: k + 1 for k, b in enumerate(ordered)}
    where = block_of_layers(sweep)
    top = run["sensitive_layers"][0] if run["sensitive_layers"] else None
    block = where.get(top["name"]) if top else None
    return {"model": name, "blocks": len(rows), "all_int8_psnr_db": sweep["sensitivity"]["baseline_psnr_db"],
            "worst_block": ordered[0]["block"], "worst_only_int8_psnr_db": ordered[0]["only_int8_psnr_db"],
            "top": top and {"name": top["name"], "score": top["score"], "block": block,
                            "block_place": place.get(block),
                            "block_only_int8_psnr_db": next((b["only_int8_psnr_db"] for b in rows
                                                            if b["block"] == block), None)},
            "explains": (run.get("ranking_account") or {}).get("explains")}


def table(results: list[dict]) -> str:
    lines = ["| model | all int8 | worst block (alone int8) | ranking's top | its block: place, alone int8 |",
             "|---|---|---|---|---|"]
    for r in results:
        top = r["top"] or {}
        lines.append(f"| {r['model']} | {r['all_int8_psnr_db']:.2f} dB | {r['worst_block']} "
                     f"({r['worst_only_int8_psnr_db']:.2f} dB) | {str(top.get('name'))[:48]} | "
                     f"{top.get('block_place')} of {r['blocks']}, {_db(top.get('block_only_int8_psnr_db'))} |")
    return "\n".join(lines)


def _db(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--json", type=Path, default=HERE / "ranking_check.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qbench-ranking-") as tmp:
        results = [measure(name, args.blocks, Path(tmp)) for name in args.models.split(",")]
    append_run(args.json, "benchmarks.ranking_check", argv, results)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
