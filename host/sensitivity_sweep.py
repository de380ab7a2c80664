"""Sensitivity measured on the device: per block of ops, what its quantization costs the outputs.

The ops of the calibrated int8 model (a :class:`~qbench.host.quantize.trial_graph.TrialGraph`) are cut, in topological order, into ``blocks`` runs of about
equal op count (a block of one op is a layer). A *configuration* gives each block a precision:
``int8`` (as calibrated), ``int16`` (its activation tensors' Q/DQ pairs in int16 over the same
calibrated range, weights int8) or ``float`` (pairs removed, weights the float model's). A block
owns the tensors its ops write, so a float block's ops still read the int8 outputs of an int8
block before it: each quantization error is counted once, in its producer's block. Every trial is a model written by
the format's trial graph from that one calibration (ONNX: QDQ graph edits; TFLite: ai-edge-quantizer
recipes over the kept QSVs) and measured by its outputs alone on the agent
(:class:`~qbench.host.evaluator.Evaluator`), all of a sweep in one agent worker.

Per block, like AIMET QuantAnalyzer's two per-layer sweeps:

* ``only_int8_psnr_db``: output PSNR when only this block is quantized (int8), every other block
  float: the loss it causes on its own;
* ``keep_float_psnr_db`` and ``gain_db``: output PSNR when only this block is float, every other
  block int8, and its gain over the all-int8 baseline;
* ``only_int16_psnr_db``: output PSNR when only this block is int16, every other block float.

A figure is null when its output is exact, and also when the output held NaN or infinity: such figures
are listed in the row's ``nonfinite`` (their verdict is ``broken``).

Quantization errors of different blocks add up in power, nearly: the output MSE of a
configuration is predicted as the sum over blocks of their "only" MSEs (:meth:`Sensitivity.predict`).
:func:`bisect` finds, like Polygraphy's ``debug precision``, the fewest ops from the start (or end)
of the topological order to keep in float for a target, in about log2(ops) trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import UserError
from .evaluator import Evaluator, Figures
from .quantize.trial_graph import TrialGraph

PRECISIONS = ("int8", "int16", "float")


@dataclass
class Block:
    """Consecutive ops of the int8 model.

    Attributes:
        index: its place in the topological order of blocks.
        ops: node names.
        tensors: the quantized activation tensors it owns: those its ops write (and graph inputs its ops
            read first).
    """

    index: int
    ops: list[str]
    tensors: set[str]

    @property
    def label(self) -> str:
        return self.ops[0] if len(self.ops) == 1 else f"{self.ops[0]} .. {self.ops[-1]}"


def make_blocks(graph: TrialGraph, count: int) -> list[Block]:
    """``graph``'s quantized ops in ``count`` consecutive blocks (fewer when it has fewer ops).

    Each quantized tensor belongs to one block, its producer's (a graph input's: its first reader's),
    so that the blocks' quantization errors are disjoint and add up.
    """
    ops = [op for op in graph.ops if op.reads or op.writes or op.weights]
    count = max(1, min(count, len(ops)))
    parts = [ops[k * len(ops) // count:(k + 1) * len(ops) // count] for k in range(count)]
    written = {t for op in ops for t in op.writes}
    blocks = []
    for k, part in enumerate(parts):
        tensors = {t for op in part for t in op.writes}
        tensors |= {t for op in part for t in op.reads if t not in written}
        written |= tensors
        blocks.append(Block(k, [op.name for op in part], tensors))
    return blocks


Config = Mapping[int, str]  # block index -> precision; blocks not named are int8


class EditTrials:
    """Writes configurations as models and measures them in batches on the device.

    A block's state is a precision of :data:`PRECISIONS`, or ``int8@METHOD``: int8 with the ranges of
    another calibration of the same model (``ranges[METHOD]``, from :meth:`TrialGraph.ranges`). Once
    ``block_method`` names a method for a block, its int8 and int16 states use that method's ranges.

    Args:
        graph: the calibrated int8 model to write trials from.
        blocks: its blocks.
        evaluator: a started :class:`Evaluator`.
        work_dir: where trial models are written (one file per distinct configuration).
        ranges: other calibrations' ranges, by method name.
    """

    def __init__(self, graph: TrialGraph, blocks: list[Block], evaluator: Evaluator, work_dir: Path,
                 ranges: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.graph, self.blocks, self.evaluator = graph, blocks, evaluator
        self.work_dir = Path(work_dir).resolve()
        self.ranges = dict(ranges or {})
        self.block_method: dict[int, str] = {}
        self._done: dict[tuple, tuple[Path, Figures]] = {}

    def state(self, config: Config, block: Block, block_method: Mapping[int, str] | None = None
              ) -> tuple[str, str | None]:
        """(precision, method of its ranges or None for the graph's own) of ``block`` in ``config``;
        ``block_method`` defaults to the current :attr:`block_method`."""
        precision, _, method = config.get(block.index, "int8").partition("@")
        chosen = self.block_method if block_method is None else block_method
        return precision, (method or chosen.get(block.index)) if precision != "float" else None

    def key(self, config: Config) -> tuple:
        return tuple(self.state(config, b) for b in self.blocks)

    def edits(self, config: Config, block_method: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The :meth:`TrialGraph.write` arguments of ``config`` (with ``block_method``, see :meth:`state`);
        ``methods``: the other calibration whose ranges each tensor takes."""
        states = {b.index: self.state(config, b, block_method) for b in self.blocks}
        floats = [b for b in self.blocks if states[b.index][0] == "float"]
        float_tensors = set().union(*(b.tensors for b in floats))
        int16 = set().union(*(b.tensors for b in self.blocks if states[b.index][0] == "int16")) - float_tensors
        methods = {t: method for b in self.blocks for method in [states[b.index][1]] if method
                   for t in b.tensors if t in self.ranges[method]}
        return {"float_tensors": float_tensors, "int16_tensors": int16,
                "float_weights": [op for b in floats for op in b.ops],
                "ranges": {t: self.ranges[m][t] for t, m in methods.items()}, "methods": methods}

    def write(self, config: Config, path: Path) -> Path:
        """The model of ``config`` at ``path``."""
        edits = self.edits(config)
        del edits["methods"]
        return self.graph.write(path, **edits)

    def measure(self, configs: Sequence[Config]) -> list[tuple[Path, Figures]]:
        """Each configuration's model and figures; configurations measured before are not measured again.
        A configuration the format cannot write (its quantizer refuses it) gets the reason as its error."""
        todo = []
        for config in configs:
            key = self.key(config)
            if key in self._done or key in (k for k, _ in todo):
                continue
            path = self.work_dir / f"trial-{len(self._done) + len(todo):04d}{self.graph.suffix}"
            try:
                todo.append((key, self.write(config, path)))
            except UserError as exc:
                self._done[key] = (path, Figures(None, None, [], f"not written: {exc}"))
        for (key, path), figures in zip(todo, self.evaluator.evaluate([p for _, p in todo])):
            self._done[key] = (path, figures)
        return [self._done[self.key(c)] for c in configs]

    @property
    def count(self) -> int:
        return len(self._done)


@dataclass
class Sensitivity:
    """The sweep's figures: the baseline and one row per block (see the module docstring)."""

    baseline: Figures
    blocks: list[Block]
    rows: list[dict[str, Any]] = field(default_factory=list)
    only: dict[str, list[list[float]]] = field(default_factory=dict)  # precision -> per block, per output MSE
    peaks: list[float] = field(default_factory=list)
    figures: tuple[str, ...] = ()  # of SWEEPS, those measured (the others are null in the rows)

    def predict(self, config: Config) -> float:
        """Predicted output PSNR of ``config``: per output, peak² over the sum of its blocks' "only" MSEs."""
        worst = math.inf
        for k, peak in enumerate(self.peaks):
            mse = sum(self.only[config.get(b.index, "int8")][b.index][k] for b in self.blocks
                      if config.get(b.index, "int8") != "float")
            if mse > 0 and peak > 0:
                worst = min(worst, 10 * math.log10(peak ** 2 / mse))
        return worst

    def to_dict(self) -> dict[str, Any]:
        section = {"baseline_psnr_db": _num(self.baseline.psnr_db), "figures": list(self.figures), "blocks": self.rows}
        if self.baseline.psnr_db == -math.inf:
            section["baseline_nonfinite"] = True
        return section


SWEEPS = ("only_int8", "only_int16", "keep_float")


def sweep(trials: EditTrials, progress: Callable[[str], None] = lambda _: None,
          figures: Sequence[str] = SWEEPS) -> Sensitivity:
    """Measures the baseline and, per block, the ``figures`` of :data:`SWEEPS`: len(figures) × blocks + 1 trials.

    A figure not measured is null in its rows (``fix`` needs no keep-float trials, nor int16 ones
    when it does not search int16).
    """
    blocks = trials.blocks
    everything_float = {b.index: "float" for b in blocks}
    make = {"only_int8": lambda b: {**everything_float, b.index: "int8"},
            "only_int16": lambda b: {**everything_float, b.index: "int16"},
            "keep_float": lambda b: {b.index: "float"}}
    configs: list[Config] = [{}] + [make[f](b) for b in blocks for f in figures]
    progress(f"sensitivity: {len(configs)} trials over {len(blocks)} blocks")
    results = [f for _, f in trials.measure(configs)]
    baseline = results[0]
    result = Sensitivity(baseline, blocks, peaks=[o["peak"] for o in baseline.outputs], only={"int8": [], "int16": []},
                         figures=tuple(figures))
    for b in blocks:
        got = dict(zip(figures, results[1 + len(figures) * b.index: 1 + len(figures) * (b.index + 1)]))
        for precision in ("int8", "int16"):
            f = got.get(f"only_{precision}")
            result.only[precision].append(_mses(f) if f is not None else [math.inf] * len(result.peaks))
        keep = got.get("keep_float")
        result.rows.append({
            "block": b.index, "label": b.label, "ops": len(b.ops), "first_op": b.ops[0], "last_op": b.ops[-1],
            **{f"{name}_psnr_db": _num(got[name].psnr_db) if name in got else None for name in SWEEPS},
            # the output verdicts of each trial: a field the pooled PSNR hides (verdicts) shows here
            **{f"{name}_verdict": got[name].verdict if name in got else None for name in SWEEPS},
            "gain_db": _num(None if keep is None or keep.psnr_db is None or baseline.psnr_db is None
                            else keep.psnr_db - baseline.psnr_db),
        })
        errors = [f.error for f in got.values() if f.error]
        if errors:
            result.rows[-1]["errors"] = errors
        nonfinite = [name for name, f in got.items() if f.psnr_db == -math.inf]
        if nonfinite:  # JSON has no -inf: these figures are null, and listed here
            result.rows[-1]["nonfinite"] = nonfinite
    return result


_SEVERITY = {"broken": 0, "degraded": 1}


def nonfinite(row: Mapping[str, Any], figure: str) -> bool:
    """Whether a sweep row's ``figure`` (``only_int8`` ...) is null because its trial's output held NaN or
    infinity, not because it is exact."""
    return figure in row.get("nonfinite", ())


def damage(row: Mapping[str, Any]) -> tuple[int, float]:
    """A sweep row's sort key, the most damaging first: its only-int8 verdict (broken, degraded, then the
    rest), then its only-int8 output PSNR, lowest first (non-finite first, exact last)."""
    value = row["only_int8_psnr_db"]
    if nonfinite(row, "only_int8"):
        value = -math.inf
    return _SEVERITY.get(row.get("only_int8_verdict"), 2), math.inf if value is None else value


def _mses(figures: Figures) -> list[float]:
    return [o["mse"] if o.get("mse") is not None else math.inf for o in figures.outputs]


def _num(value: float | None) -> float | None:
    """A figure for JSON (which has no infinity): null when exact (a failed trial says so in ``errors``)."""
    return None if value is None or not math.isfinite(value) else round(value, 4)


def bisect(trials: EditTrials, ops_graph: TrialGraph, target_db: float, from_end: bool = False,
           work_dir: Path | None = None) -> dict[str, Any]:
    """The fewest ops, counted from the start (``from_end``: the end) of the topological order, to keep in
    float so that the output PSNR reaches ``target_db``; one trial per step (about log2(ops) steps).

    Returns:
        ``{"direction", "ops_total", "ops_float", "first_ops", "psnr_db", "steps": [{"ops_float", "psnr_db"}]}``.
        Every op in float is the float model (exact), so some count always reaches the target; the search
        assumes, as Polygraphy's does, that more ops in float never make the output worse.
    """
    ops = [op for op in ops_graph.ops if op.reads or op.writes or op.weights]
    order = list(reversed(ops)) if from_end else ops
    work = Path(work_dir or trials.work_dir)
    steps: list[dict[str, Any]] = []

    def psnr(n: int) -> float:
        chosen = order[:n]
        tensors = {t for op in chosen for t in (*op.reads, *op.writes)}
        path = ops_graph.write(work / f"bisect-{'end' if from_end else 'start'}-{n:05d}{ops_graph.suffix}", tensors, (),
                               [op.name for op in chosen])
        (figures,) = trials.evaluator.evaluate([path])
        value = -math.inf if figures.psnr_db is None else figures.psnr_db
        steps.append({"ops_float": n, "psnr_db": _num(figures.psnr_db)})
        return value

    lo, hi = 0, len(order)  # psnr(lo) < target (checked), psnr(hi) >= target (assumed: all float is exact)
    found = hi
    if psnr(0) >= target_db:
        found = 0
    else:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if psnr(mid) >= target_db:
                hi = mid
            else:
                lo = mid
        found = hi
    final = next((s["psnr_db"] for s in steps if s["ops_float"] == found), None)
    if final is None and found:
        psnr(found)
        final = steps[-1]["psnr_db"]
    return {"direction": "from the end" if from_end else "from the start", "ops_total": len(order),
            "ops_float": found, "first_ops": [op.name for op in order[:min(found, 8)]], "psnr_db": final,
            "steps": steps}


def measure(trials, blocks: int = 24, bisect_target: float | None = None, from_end: bool = False,
            say: Callable[[str], None] = lambda _: None):
    """``qbench sensitivity``: quantize, sweep every block on the device, optionally bisect, then one full
    ``run`` of the int8 model; publishes ``report.json`` with the ``sensitivity`` section.

    Args:
        trials: a :class:`qbench.host.trials.Trials` set up with the shared run settings.

    Returns:
        The published report's path and the report.
    """
    prepared = trials.prepare()
    out = trials.base.out_dir
    method = trials.base.calibration_method
    graph = trials.calibrated(out / "quantized" / trials.int8_name, trials.settings(method))
    int8 = graph.path
    with Evaluator(trials.transport(), prepared.path, trials.eval_samples(), trials.base.runner,
                   trials.base.timeout_s, trials.ui.progress,
                   trials.format.output_structures(prepared.path)) as evaluator:  # each trial's verdicts too
        sweep_trials = EditTrials(graph, make_blocks(graph, blocks), evaluator, out / "trials")
        section = sweep(sweep_trials, say).to_dict()
        if bisect_target is not None:
            say(f"bisect: fewest ops in float for {bisect_target} dB")
            section["bisect"] = {"target_psnr_db": bisect_target,
                                 **bisect(sweep_trials, graph, bisect_target, from_end)}
        section["trials"] = evaluator.trials
    section["method"] = method
    report = trials.measure("int8 run", int8, out / "run", method)
    return trials.publish(report, int8, "sensitivity", section)
