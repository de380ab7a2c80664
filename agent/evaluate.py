"""The ``evaluate`` job: output error of several candidate models against one reference, in one worker.

A sensitivity sweep or a fix search measures dozens of candidates of one float model. Each needs
only its outputs compared with the float model's: no per-layer capture, no timing. So one worker
runs the reference once over every sample, keeps its outputs, then loads each candidate in turn,
runs every sample and reduces its outputs against the reference's as they come, and drops it
before the next one. A candidate that fails to load or run gets its error in its result; the
others are still measured.

Figures per output, pooled over samples and elements (float64 sums; see protocols/README.md):
``mse`` = Σ(f − q)² / count, ``peak`` = max|f|, ``psnr_db`` = 10·log10(peak² / mse),
``sqnr_db`` = 10·log10(Σf² / Σ(f − q)²); both are null when the error is 0 (exact) or the
reference is all zeros.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from qbench.protocols.messages import (
    NONFINITE_OUTPUT, CapturePair, EvaluateReply, EvaluateRequest, ModelEvaluation, OutputError, StructureRequest,
    from_dict,
)

from . import memory
from .runners import runner_class
from .capture import dequantize
from .structure import StructureAccumulator

Progress = Callable[[str, int, int], None]


def run_evaluate(job: dict, feeds: Sequence[Mapping[str, np.ndarray]], progress: Progress) -> EvaluateReply:
    """Runs ``job["reference_path"]`` and each of ``job["model_paths"]`` over ``feeds``."""
    req = from_dict(EvaluateRequest, job["request"])
    cls = runner_class(req.runner.runtime)
    total = len(job["model_paths"])
    progress("evaluate", 0, total)
    start = time.perf_counter()
    reference_runner = cls(job["reference_path"], req.runner)
    reference_runner.load()
    reference = [{k: np.array(v, copy=True) for k, v in reference_runner.infer(feed).items()} for feed in feeds]
    del reference_runner
    reference_seconds = time.perf_counter() - start
    results = []
    for k, path in enumerate(job["model_paths"]):
        results.append(_evaluate_one(cls(path, req.runner), feeds, reference, req.structure))
        progress("evaluate", k + 1, total)
    return EvaluateReply(results=results, reference_seconds=reference_seconds, peak_mb=memory.peak_rss_mb())


def _evaluate_one(runner, feeds: Sequence[Mapping[str, np.ndarray]], reference: list[dict[str, np.ndarray]],
                  structure: Mapping[str, StructureRequest]) -> ModelEvaluation:
    start = time.perf_counter()
    try:
        runner.load()
        sums = {name: _Sums(structure.get(name)) for name in reference[0]}
        for feed, ref in zip(feeds, reference):
            got = runner.infer(feed)
            for name, acc in sums.items():
                acc.add(ref[name], _real(runner, name, got.get(name), ref[name]))
    except Exception as exc:  # one broken candidate must not cost the others' figures
        return ModelEvaluation(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                               seconds=time.perf_counter() - start)
    return ModelEvaluation(outputs=[acc.result(name) for name, acc in sums.items()],
                           seconds=time.perf_counter() - start)


def _real(runner, name: str, got: np.ndarray | None, ref: np.ndarray) -> np.ndarray | None:
    """A candidate's integer output, where the reference's is float, dequantized with its own
    quantization: a LiteRT int8 model keeps int8 outputs (its runner knows their scale); ONNX QDQ
    outputs are float already."""
    if got is None or np.asarray(got).dtype.kind not in "iu" or ref.dtype.kind != "f" or not hasattr(runner, "qparams"):
        return got
    qp = runner.qparams(name)
    return got if qp is None else dequantize(got, qp)


class _Sums:
    """float64 sums of one output over samples."""

    def __init__(self, structure: StructureRequest | None = None) -> None:
        self.structure = None if structure is None else StructureAccumulator(CapturePair("", "", structure=structure))
        self.count = 0
        self.sum_sq_err = 0.0
        self.sum_sq_float = 0.0
        self.peak = 0.0
        self.max_abs_err = 0.0
        self.error: str | None = None

    def add(self, ref: np.ndarray, got: np.ndarray | None) -> None:
        if self.error is not None:
            return
        if got is None or np.shape(got) != ref.shape:
            self.error = f"shape {None if got is None else list(np.shape(got))}, reference {list(ref.shape)}"
            return
        f = ref.astype(np.float64).ravel()
        d = np.asarray(got).astype(np.float64).ravel() - f
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(d))):
            self.error = NONFINITE_OUTPUT
            return
        if self.structure is not None:
            self.structure.update(ref, np.asarray(got))
        self.count += f.size
        self.sum_sq_err += float(np.dot(d, d))
        self.sum_sq_float += float(np.dot(f, f))
        if f.size:
            self.peak = max(self.peak, float(np.max(np.abs(f))))
            self.max_abs_err = max(self.max_abs_err, float(np.max(np.abs(d))))

    def result(self, name: str) -> OutputError:
        if self.error is not None or not self.count:
            return OutputError(name=name, error=self.error or "empty output")
        mse = self.sum_sq_err / self.count
        exact = self.sum_sq_err == 0.0
        psnr = None if exact or self.peak == 0 else 10 * math.log10(self.peak ** 2 / mse)
        sqnr = None if exact or self.sum_sq_float == 0 else 10 * math.log10(self.sum_sq_float / self.sum_sq_err)
        return OutputError(name=name, count=self.count, mse=mse, peak=self.peak, sum_sq_float=self.sum_sq_float,
                           max_abs_err=self.max_abs_err, psnr_db=psnr, sqnr_db=sqnr,
                           structure=None if self.structure is None else self.structure.s)
