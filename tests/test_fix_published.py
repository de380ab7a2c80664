"""`qbench fix` and `qbench sensitivity` on a published model we did not write (PaddleOCR's text-direction
classifier, MobileNetV3, from the rapidocr-onnxruntime wheel), on real-looking text lines: the
figures are checked against plain ONNX Runtime sessions on the files qbench wrote."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import published as P
from cli import load_report, qbench
from fix_checks import FAST, sha
from plain_ort import session

MODEL = P.model("ppocr-cls")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MODEL.path.is_file(), reason="published models not fetched: make models")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fix-published")
    for split, count in (("calib", 8), ("eval", 8)):
        np.savez(tmp / f"{split}.npz", **{k: v[:, None] for k, v in P.samples(MODEL, count, split=split).items()})
    return tmp


def _psnr(float_path, int8_path, eval_npz) -> float:
    x = np.load(eval_npz)["x"]
    f, q = ([np.stack([s.run(None, {"x": sample})[0] for sample in x]).astype(np.float64)]
            for s in (session(float_path), session(int8_path)))
    f, q = f[0], q[0]
    mse = np.mean((f - q) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(np.max(np.abs(f)) ** 2 / mse)


def test_fix_repairs_a_published_classifier(workdir, agent_cache):
    out = workdir / "fix"
    proc = qbench("fix", str(MODEL.path), "--input-shape", MODEL.input_shape, "--target-psnr", "45",
                  "--methods", "minmax", "--blocks", "8", "--data", "eval.npz", "--calibration", "calib.npz",
                  "--out", str(out), *FAST, cwd=workdir, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    section = report["fix"]
    baseline = next(r for r in section["pareto"] if r["family"] == "baseline")
    assert baseline["output_psnr_db"] < 45 <= report["summary"]["output_psnr_db"]
    assert 0 < section["chosen"]["int8_share"] < 1  # repaired, not simply float
    final = out / "model.int8.onnx"
    prepared = out / "float.prepared.onnx"
    assert sha(final) == sha(section["chosen"]["model"])
    assert report["summary"]["output_psnr_db"] == pytest.approx(_psnr(prepared, final, workdir / "eval.npz"), abs=1e-3)
    assert baseline["output_psnr_db"] == pytest.approx(_psnr(prepared, baseline["model"], workdir / "eval.npz"),
                                                       abs=1e-3)
