"""``qbench fix``: a search over the remedies a user has, ordered by measured sensitivity, for every format.

Remedies, each a real, measured trial on the device:

1. **calibration method and bias correction, per model**: the float model is calibrated with each of
   ``methods`` (same calibration samples), and each of those int8 models is also measured with its
   biases corrected for its weights' mean output shift (ONNX; :mod:`~qbench.host.quantize.bias_correction`);
   the variant whose int8 model has the best output PSNR is the base.
2. **calibration method, per tensor**: for the :data:`RANGE_BLOCKS` blocks with the largest
   only-int8 error, each other method's ranges for that block's tensors alone (like
   ``TensorQuantOverrides`` rmin/rmax; TFLite: that method's QSVs for those tensors); a block keeps the method
   whose trial has the lowest output error, if lower than the base's (the ``ranges`` point). Those
   ranges were chosen block by block, so the best configuration found is measured once more on the
   base's own ranges, and the better of the two is kept.
3. **int16 activations / float, per block**: from the base's sensitivity sweep
   (:mod:`qbench.host.sensitivity_sweep`), blocks are ordered by their measured loss, and three
   families of configurations are built as prefixes of that order:

   * ``float``: the n most damaging blocks (only-int8 MSE, largest first) in float;
   * ``int16``: the n blocks that int16 helps most (only-int8 MSE − only-int16 MSE) in int16;
   * ``int16+float``: every block in int16, then the n most damaging in int16 (only-int16 MSE) in float.

   For each family the sweep's additive-noise prediction gives the smallest n expected to reach the
   target; that n, its neighbours, the middle and the end of the family are measured in one batch
   (only the end, the family's ceiling, when no n is predicted to reach it), then the smallest n
   that meets the target is found by bisection over the measured figures.
4. **Pareto table**: every measured configuration with its output PSNR, share of ops still in
   int8, and, for the baseline and the points on the Pareto front (no other point has both a higher
   PSNR and a higher int8 share) that meet the target, the int8 median latency on the device (at most
   :data:`PARETO_RUNS` runs).
5. **choice and verification**: of the points that meet the target, the one with the largest int8
   share (then the lowest latency, then the highest PSNR); it is measured by a full ``run``
   (per-layer capture, timing, memory), whose report is published as ``report.json``.

Trial models are written from the base's one calibration by the format's trial graph
(:meth:`ModelFormat.calibrated <qbench.host.formats.base.ModelFormat.calibrated>`: ONNX edits the
calibrated QDQ graph, :mod:`qbench.host.quantize.qdq_edit`; TFLite quantizes edited ai-edge-quantizer
recipes over the kept QSVs, :mod:`qbench.host.quantize.tflite_edit`), measured by their outputs
alone, all in one started agent. A calibration method another one's ranges equal everywhere
(TFLite's weight algorithms: ai-edge-quantizer swaps no weight algorithm per tensor) is not tried
per tensor; a line says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qbench.protocols.messages import TimingConfig

from .errors import UserError
from .evaluator import Evaluator, Figures
from .fix_target import Target
from .sensitivity_sweep import Config, EditTrials, Sensitivity, make_blocks, sweep
from .trials import Trials

FAMILIES = ("float", "int16", "int16+float")
PARETO_RUNS = 10
RANGE_BLOCKS = 4  # blocks, the most damaging first, that try the other methods' ranges


@dataclass
class Point:
    """One measured configuration of the search."""

    family: str
    moved: int  # blocks moved to higher precision
    config: dict[int, str]
    model: Path
    figures: Figures
    int8_share: float
    predicted_psnr_db: float | None = None
    latency_int8_ms: float | None = None
    pareto: bool = False
    block_method: dict[int, str] = field(default_factory=dict)  # blocks whose ranges come from another method

    def row(self) -> dict[str, Any]:
        return {
            "family": self.family, "blocks_moved": self.moved,
            "float_blocks": sorted(k for k, v in self.config.items() if v == "float"),
            "int16_blocks": sorted(k for k, v in self.config.items() if v == "int16"),
            "range_blocks": sorted(self.block_method),
            "output_psnr_db": _json(self.figures.psnr_db), "output_sqnr_db": _json(self.figures.sqnr_db),
            "top1_agreement": self.figures.top1, "verdict": self.figures.verdict,
            "exact": self.figures.psnr_db == math.inf, "predicted_psnr_db": _json(self.predicted_psnr_db),
            "int8_share": round(self.int8_share, 4), "latency_int8_ms": self.latency_int8_ms,
            "pareto": self.pareto, "model": str(self.model), "error": self.figures.error,
        }


def check_names(names: tuple[str, ...], option: str, offered: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` (of calibration methods, remedy families) when they are distinct ones of ``offered``.

    Raises:
        UserError: naming ``option``, when not.
    """
    bad = [n for n in names if n not in offered]
    if not names or bad or len(set(names)) != len(names):
        raise UserError(f"{option}: give distinct names among {', '.join(offered)}, not {','.join(names)!r}")
    return names


@dataclass
class RepairResult:
    met: bool
    report_path: Path
    report: dict[str, Any]
    points: list[Point] = field(default_factory=list)


class Repair:
    """The search (see the module docstring).

    Args:
        trials: set up with the shared run settings (prepares, quantizes, runs, publishes).
        target: what the final model must reach.
        methods: calibration methods to try per model (None: the format's ``fix_methods``).
        blocks: blocks of the sensitivity sweep.
        families: which configuration families to search (:data:`FAMILIES`).
        say: one line of progress for the user.
    """

    def __init__(self, trials: Trials, target: Target, methods: tuple[str, ...] | None = None,
                 blocks: int = 16, families: tuple[str, ...] = FAMILIES,
                 say: Callable[[str], None] = lambda _: None) -> None:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise UserError(f"unknown remedy family {unknown[0]!r}; use {', '.join(FAMILIES)}")
        offered = trials.format.methods
        self.methods = check_names(tuple(methods or trials.format.fix_methods), "--methods", offered)
        self.trials, self.target = trials, target
        self.blocks, self.families, self.say = blocks, tuple(families), say
        self.range_rows: list[dict[str, Any]] = []

    def run(self) -> RepairResult:
        trials = self.trials
        clock = _Phases()
        prepared = trials.prepare()
        out = trials.base.out_dir
        graphs = {}
        with clock("calibrate"):
            for method in self.methods:
                self.say(f"calibrate: {method}")
                graphs[method] = trials.calibrated(out / "methods" / method / trials.int8_name,
                                                   trials.settings(method))
            variants = {(m, False): g for m, g in graphs.items()}
            for method in self.methods:
                corrected = trials.bias_corrected(graphs[method], out / "methods" / f"{method}+bias" / trials.int8_name)
                if corrected is not None:
                    variants[(method, True)] = corrected
        models = {m: g.path.resolve() for m, g in graphs.items()}
        inputs = trials.eval_samples()
        with clock("search"), Evaluator(trials.transport(), prepared.path, inputs, trials.base.runner,
                                        trials.base.timeout_s, trials.ui.progress,
                                        trials.format.output_structures(prepared.path)) as evaluator:
            method_rows, (method, corrected) = self._pick_method(evaluator, variants)
            graph = variants[method, corrected]
            others = self._other_ranges(graphs, method)
            del graphs, variants
            sweep_trials = EditTrials(graph, make_blocks(graph, self.blocks), evaluator, out / "trials", others)
            points, sensitivity = self._search(sweep_trials)
            points += self._without_ranges(sweep_trials, _choose(points, self.target))
            with clock("pareto timing"):
                self._pareto(points, evaluator)
            chosen = _choose(points, self.target)
        self.say(f"verify: full run of the chosen configuration ({chosen.family}, {chosen.moved} blocks moved)")
        with clock("verify"):
            report = trials.measure("verify", chosen.model, out / "verify", method)
        met = self.target.met_report(report)
        payload = {
            "target": self.target.to_dict(), "met": met, "method": method, "bias_correction": corrected,
            "methods": method_rows,
            "blocks": [{"block": b.index, "ops": b.ops} for b in sweep_trials.blocks],
            "ranges": self.range_rows,
            "chosen": chosen.row(), "pareto": [p.row() for p in points], "trials": evaluator.trials,
            "stop": "target met" if met else _why_not(points, self.target),
            "settings": {**trials.settings(method), **({"bias_correction": True} if corrected else {}),
                         "edits": _edits(chosen, sweep_trials, models)},
            "phases_s": clock.seconds,
        }
        if sensitivity is not None:
            trials.sections["sensitivity"] = sensitivity.to_dict()
        path, published = trials.publish(report, chosen.model, "fix", payload)
        return RepairResult(met, path, published, points)

    def _pick_method(self, evaluator: Evaluator, variants: dict[tuple[str, bool], Any]
                     ) -> tuple[list[dict], tuple[str, bool]]:
        """The (method, bias corrected) variant with the best output PSNR; the first of equals, so a
        correction that changes nothing is not chosen."""
        figures = evaluator.evaluate([g.path.resolve() for g in variants.values()])
        rows = [{"method": m, "bias_correction": c, "output_psnr_db": _json(f.psnr_db), "model": str(g.path),
                 "error": f.error} for ((m, c), g), f in zip(variants.items(), figures)]
        scored = [(f.psnr_db if f.psnr_db is not None else -math.inf, -k, v)
                  for k, (v, f) in enumerate(zip(variants, figures))]
        best = max(scored)[2]
        self.say("calibration: " + ", ".join(f"{_variant(r['method'], r['bias_correction'])} "
                                              f"{_fmt(r['output_psnr_db'])} dB" for r in rows)
                 + f" -> {_variant(*best)}")
        return rows, best

    def _other_ranges(self, graphs: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
        """The other methods' ranges of the tensors where they differ from ``method``'s."""
        base = graphs[method].ranges()
        others = {}
        for m, graph in graphs.items():
            if m == method:
                continue
            differ = {t: r for t, r in graph.ranges().items() if t in base and not _same(r, base[t])}
            if differ:
                others[m] = differ
            else:
                self.say(f"ranges: {m} gives every activation tensor the range {method} gives; not tried per tensor")
        return others

    def _search(self, trials: EditTrials) -> tuple[list[Point], Sensitivity | None]:
        (base_path, base), = trials.measure([{}])
        points = [self._point(trials, "baseline", 0, {}, base_path, base, None)]
        if self.target.met_figures(base):
            return points, None
        int16 = any("int16" in f for f in self.families)
        sens = sweep(trials, self.say, ("only_int8", "only_int16") if int16 else ("only_int8",))
        if self._choose_ranges(trials, sens):
            (path, figures), = trials.measure([{}])
            points.append(self._point(trials, "ranges", 0, {}, path, figures, sens.predict({})))
        for family in self.families:
            order = _order(sens, family)
            configs = [_config(family, order, n, trials) for n in range(len(order) + 1)]
            predicted = [sens.predict(c) for c in configs]
            k = len(order)
            first = next((n for n, p in enumerate(predicted) if self.target.predicted_met(p)), None)
            # predicted to reach the target: around the crossing, and the curve's middle and end;
            # predicted never to: only its end, the family's ceiling
            wanted = sorted({n for n in ((first - 1, first, first + 1, k // 2, k) if first is not None else (k,))
                             if 1 <= n <= k})
            measured = dict(zip(wanted, self._measure(trials, family, wanted, configs, predicted)))
            # the smallest n that meets the target, by bisection between a failing and a passing n
            while True:
                passing = [n for n, p in measured.items() if self.target.met_figures(p.figures)]
                if not passing:
                    break
                hi = min(passing)
                lo = max((n for n in measured if n < hi), default=0)
                if hi - lo <= 1:
                    break
                mid = (lo + hi) // 2
                measured[mid] = self._measure(trials, family, [mid], configs, predicted)[0]
            points += [measured[n] for n in sorted(measured)]
        return points, sens

    def _choose_ranges(self, trials: EditTrials, sens: Sensitivity) -> bool:
        """Per-tensor calibration: for the :data:`RANGE_BLOCKS` most damaging blocks, each other method's
        ranges for that block alone (every other block float); a block keeps the method with the lowest
        output error, if lower than the base's. Returns whether any block changed method."""
        if not trials.ranges:
            return False
        worst = _order(sens, "float")[:RANGE_BLOCKS]
        everything_float = {b.index: "float" for b in trials.blocks}
        tries = [(b, m) for b in worst for m in trials.ranges]
        self.say(f"ranges: {len(tries)} trials, other methods' ranges for the {len(worst)} most damaging blocks")
        results = trials.measure([{**everything_float, b: f"int8@{m}"} for b, m in tries])
        best: dict[int, tuple[float, str | None, list[float], Figures]] = {
            b: (_noise(sens, sens.only["int8"][b]), None, sens.only["int8"][b], None) for b in worst}
        for (b, m), (_, figures) in zip(tries, results):
            mses = [o["mse"] if o.get("mse") is not None else math.inf for o in figures.outputs]
            if figures.error is None and _noise(sens, mses) < best[b][0]:
                best[b] = (_noise(sens, mses), m, mses, figures)
        for b, (_, method, mses, figures) in best.items():
            if method is not None:
                trials.block_method[b] = method
                sens.only["int8"][b] = mses
                self.range_rows.append({"block": b, "method": method, "only_int8_psnr_db": _json(figures.psnr_db)})
        return bool(self.range_rows)

    def _without_ranges(self, trials: EditTrials, best: Point) -> list[Point]:
        """The best point once more with every block on the base's own ranges: the other methods' ranges
        were chosen block by block, alone, and are kept only where the whole configuration measures better."""
        if not best.block_method:
            return []
        chosen, trials.block_method = trials.block_method, {}
        try:
            (path, figures), = trials.measure([best.config])
            return [self._point(trials, best.family, best.moved, dict(best.config), path, figures,
                                best.predicted_psnr_db)]
        finally:
            trials.block_method = chosen

    def _measure(self, trials: EditTrials, family: str, ns: list[int], configs: list[Config],
                 predicted: list[float]) -> list[Point]:
        self.say(f"search {family}: {len(ns)} configuration(s), blocks moved {', '.join(map(str, ns))}")
        results = trials.measure([configs[n] for n in ns])
        return [self._point(trials, family, n, dict(configs[n]), path, figures, predicted[n])
                for n, (path, figures) in zip(ns, results)]

    @staticmethod
    def _point(trials: EditTrials, family: str, n: int, config: dict[int, str], path: Path, figures: Figures,
               predicted: float | None) -> Point:
        total = sum(len(b.ops) for b in trials.blocks)
        int8 = sum(len(b.ops) for b in trials.blocks if config.get(b.index, "int8") == "int8")
        return Point(family, n, config, path, figures, int8 / total if total else 1.0,
                     None if predicted is None or not math.isfinite(predicted) else predicted,
                     block_method=dict(trials.block_method))

    def _pareto(self, points: list[Point], evaluator: Evaluator) -> None:
        """Marks the Pareto front of (output PSNR, int8 share) and times, on the device, the baseline and
        the front's points that meet the target (the candidates of the choice)."""
        value = [(-math.inf if p.figures.psnr_db is None else p.figures.psnr_db) for p in points]
        seen: dict[Path, float] = {}
        for k, p in enumerate(points):
            p.pareto = not any((value[j] >= value[k] and q.int8_share >= p.int8_share)
                               and (value[j] > value[k] or q.int8_share > p.int8_share)
                               for j, q in enumerate(points))
            if p.pareto and (p.family == "baseline" or self.target.met_figures(p.figures)):
                if p.model not in seen:
                    self.say(f"time: {p.family}, {p.moved} blocks moved")
                    seen[p.model] = evaluator.latency_ms(p.model, _pareto_timing(self.trials.base.timing))
                p.latency_int8_ms = seen[p.model]


class _Phases:
    """Wall seconds by phase (``with clock("name"):``); a phase inside another counts in both."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def _pareto_timing(timing: TimingConfig) -> TimingConfig:
    """The run's timing, cut to at most :data:`PARETO_RUNS` runs after at most 3 warm-ups: a table to
    rank configurations by, not the final figure (the verifying run times the chosen one in full)."""
    return dataclasses.replace(timing, warmup=min(timing.warmup, 3), runs=min(timing.runs, PARETO_RUNS),
                               min_seconds=0.0, max_runs=min(timing.max_runs, PARETO_RUNS))


def _noise(sens: Sensitivity, mses: list[float]) -> float:
    """A block's error over every output, each output's MSE relative to its peak²."""
    return sum(m / (p * p) if p else m for m, p in zip(mses, sens.peaks))


def _order(sens: Sensitivity, family: str) -> list[int]:
    """Block indices in the order the family moves them."""
    def total(precision: str, b: int) -> float:
        return _noise(sens, sens.only[precision][b])

    blocks = range(len(sens.blocks))
    if family == "float":
        return sorted(blocks, key=lambda b: -total("int8", b))
    if family == "int16":
        return sorted(blocks, key=lambda b: -(total("int8", b) - total("int16", b)))
    return sorted(blocks, key=lambda b: -total("int16", b))


def _config(family: str, order: list[int], n: int, trials: EditTrials) -> dict[int, str]:
    if family == "float":
        return {b: "float" for b in order[:n]}
    if family == "int16":
        return {b: "int16" for b in order[:n]}
    return {**{b.index: "int16" for b in trials.blocks}, **{b: "float" for b in order[:n]}}


def _choose(points: list[Point], target: Target) -> Point:
    """The point that meets the target with the largest int8 share (then lowest latency, highest PSNR);
    the highest PSNR when none meets it."""
    def psnr(p: Point) -> float:
        return -math.inf if p.figures.psnr_db is None else p.figures.psnr_db

    meeting = [p for p in points if target.met_figures(p.figures)]
    if meeting:
        return max(meeting, key=lambda p: (p.int8_share, p.pareto, -(p.latency_int8_ms or math.inf), psnr(p),
                                           not p.block_method))
    return max(points, key=lambda p: (psnr(p), p.int8_share))


def _why_not(points: list[Point], target: Target) -> str:
    if any(target.met_figures(p.figures) for p in points):
        return "the chosen configuration met the target in its trial but not in the verifying run"
    best = max((p for p in points if p.figures.psnr_db is not None), key=lambda p: p.figures.psnr_db, default=None)
    if best is None:
        return f"no configuration reached {target.text()} (no figures)"
    return (f"no configuration reached {target.text()} (best {_fmt(best.figures.psnr_db)} dB, top-1 "
            f"{_fmt(best.figures.top1)}, verdict {best.figures.verdict})")


def _edits(point: Point, trials: EditTrials, models: dict[str, Path]) -> dict[str, Any]:
    """The QDQ edits of ``point`` by name: what reproduces its model from the base's int8 model."""
    edits = trials.edits(point.config, point.block_method)
    methods = edits["methods"]
    return {"float_tensors": sorted(edits["float_tensors"]), "int16_tensors": sorted(edits["int16_tensors"]),
            "float_weights": edits["float_weights"], "ranges": dict(sorted(methods.items())),
            "range_models": {m: str(models[m]) for m in sorted(set(methods.values()))}}


def _same(a: Any, b: Any) -> bool:
    """Two ranges (arrays, or tuples or dicts of them) hold the same values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _variant(method: str, corrected: bool) -> str:
    return f"{method}+bias correction" if corrected else method


def _json(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
