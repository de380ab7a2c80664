"""``qbench fix`` for TFLite: mixed precision found greedily and verified on the device.

(ONNX models get the remedy search of :mod:`qbench.host.repair`, which edits one calibrated QDQ
graph; this loop re-quantizes per step, which ai-edge-quantizer models need. It works for ONNX too.)

A *layer* is a compared float tensor of the report (its name is the tensor's name), produced by
one op of the prepared float graph. Moving a layer to higher precision covers the layer's tensor
and the activation tensors its op reads, because a layer shows error either from its own
quantization or by amplifying the quantization error of its inputs (a softmax over wide logits):

* ``float``: every op that produces or reads one of those tensors is left unquantized (ONNX:
  ``nodes_to_exclude``; TFLite: ai-edge-quantizer ``no_quantize`` entries), so the layer's op
  computes in float, from float inputs, with float weights. ONNX Runtime's QDQ quantizer quantizes
  a tensor when its producer *or any* reader is quantized, so excluding the layer's node alone
  would leave its tensors quantized.
* ``int16``: those of the tensors that the baseline quantizes get int16 activations (ONNX:
  ``TensorQuantOverrides``, quant_type QInt16; TFLite: the ops producing them get ai-edge-quantizer's
  a16w8 config, and the quantizer requantizes where int8 and int16 tensors meet).

The loop is the same for both formats; :class:`~qbench.host.formats.base.ModelFormat` does the format's part.

Steps (every one a real measurement on the device, see :mod:`qbench.host.trials`):

1. baseline: everything quantized.
2. fallback: rank the layers of the last kept step's report with
   :func:`qbench.host.compare.sensitivity.rank_sensitive` and move the first ``layers_per_step``
   eligible ones (not moved yet, moving them changes the quantization settings, and in float some
   node stays quantized) to higher precision. Repeat until the output PSNR reaches the target,
   ``max_steps`` fallback steps were measured, no layer is eligible, or a step's int8 median latency
   exceeds ``max_latency_ratio`` x the baseline's (that step is not kept).
3. revert, only when the target was met: for each moved layer, last moved first, quantize it again;
   keep the revert when the output PSNR still reaches the target.

A step whose settings equal an already measured step's is not measured again: it carries that
step's figures and says ``same_as_step``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .formats.base import GraphIndex
from .trials import Trials, output_psnr, step_figures

PRECISIONS = ("float", "int16")

Ranker = Callable[..., list[dict]]


@dataclass
class FixResult:
    """What ``fix`` found.

    Attributes:
        met: the final model reaches the target.
        report_path: ``out/report.json`` (the final model's report with the ``fix`` key).
        report: that report.
    """

    met: bool
    report_path: Path
    report: dict[str, Any]


@dataclass
class _Trial:
    step: int
    layers: tuple[str, ...]
    model: Path
    report: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)


class Fixer:
    """Greedy mixed-precision search on the device.

    Args:
        trials: set up with the shared run settings.
        target_psnr_db: the output PSNR to reach (every float output, the lowest counts).
        precision: "float" or "int16".
        method: the calibration method of every step.
        max_steps: fallback steps to measure at most (the baseline and reverts do not count).
        max_latency_ratio: stop when a step's int8 median latency exceeds this times the baseline's.
        layers_per_step: layers moved per fallback step.
        rank: the sensitivity ranking; defaults to ``rank_sensitive``.
    """

    def __init__(self, trials: Trials, target_psnr_db: float, precision: str = "float", method: str = "minmax",
                 max_steps: int = 8, max_latency_ratio: float | None = None, layers_per_step: int = 1,
                 rank: Ranker | None = None) -> None:
        if precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.trials = trials
        self.target = target_psnr_db
        self.precision = precision
        self.method = method
        self.max_steps = max_steps
        self.max_latency_ratio = max_latency_ratio
        self.layers_per_step = layers_per_step
        self.rank = rank
        self.steps: list[dict[str, Any]] = []
        self._measured: dict[str, _Trial] = {}
        self._graph = GraphIndex()
        self._quantized: set[str] = set()
        self._tensors: dict[str, str] = {}  # report layer name -> prepared graph tensor, where they differ

    def run(self) -> FixResult:
        """Runs baseline, fallback and revert steps; publishes the final model and report."""
        prepared = self.trials.prepare()
        self._graph = self.trials.format.index(prepared.path)
        current = self._step("baseline", (), ())
        self._quantized = self.trials.format.quantized(current.report, current.model)
        stop = "target met"
        fallback_steps = 0
        while not self._met(current):
            if fallback_steps >= self.max_steps:
                stop = f"--max-steps {self.max_steps} spent"
                break
            chosen = self._candidates(current)
            if not chosen:
                stop = "no layer left to move"
                break
            fallback_steps += 1
            trial = self._step("fallback", tuple(chosen), (*current.layers, *chosen))
            ratio = self.steps[-1]["latency_ratio"]
            if self.max_latency_ratio is not None and (ratio is None or ratio > self.max_latency_ratio):
                self.steps[-1]["kept"] = False
                stop = f"latency budget spent: {ratio}x the baseline's int8 latency > {self.max_latency_ratio}x"
                break
            current = trial
        if self._met(current):
            current = self._revert_pass(current)
        met = self._met(current)
        payload = {
            "target_psnr_db": self.target,
            "precision": self.precision,
            "met": met,
            "stop": stop if not met else "target met",
            "steps": self.steps,
            "kept_float": list(current.layers) if self.precision == "float" else [],
            "kept_int16": list(current.layers) if self.precision == "int16" else [],
            "settings": self.quantize_settings(current.layers),
        }
        path, report = self.trials.publish(current.report, current.model, "fix", payload)
        return FixResult(met, path, report)

    def quantize_settings(self, layers: tuple[str, ...]) -> dict[str, Any]:
        """The exact quantization settings of a step with ``layers`` moved (JSON, see :meth:`Trials.settings`)."""
        moved = sorted(set().union(*(self._move(layer) for layer in layers)))
        if self.precision == "float":
            return self.trials.settings(self.method, float_ops=moved)
        return self.trials.settings(self.method, int16=moved)

    def _revert_pass(self, current: _Trial) -> _Trial:
        for layer in reversed(current.layers):
            remaining = tuple(x for x in current.layers if x != layer)
            trial = self._step("revert", (layer,), remaining)
            if self._met(trial):
                current = trial
            else:
                self.steps[-1]["kept"] = False
        return current

    def _step(self, action: str, layers: tuple[str, ...], fallback: tuple[str, ...]) -> _Trial:
        """Quantizes with ``fallback`` in higher precision and measures it (or reuses an equal step)."""
        index = len(self.steps)
        settings = self.quantize_settings(fallback)
        key = json.dumps(settings, sort_keys=True)
        entry: dict[str, Any] = {"step": index, "action": action, "layers": list(layers),
                                 "fallback": list(fallback)}
        earlier = self._measured.get(key)
        if earlier is None:
            step_dir = self.trials.base.out_dir / "steps" / f"{index:02d}-{action}"
            model = self.trials.quantize(step_dir / self.trials.int8_name, settings)
            report = self.trials.measure(f"step {index} {action}", model, step_dir, self.method)
            trial = _Trial(index, fallback, model, report, step_figures(report))
            self._measured[key] = trial
        else:
            trial = _Trial(index, fallback, earlier.model, earlier.report, earlier.figures)
            entry["same_as_step"] = earlier.step
        baseline = self.steps[0]["latency_int8_ms"] if self.steps else trial.figures["latency_int8_ms"]
        entry.update(trial.figures)
        entry["latency_ratio"] = _ratio(trial.figures["latency_int8_ms"], baseline)
        entry["model"] = str(trial.model)
        entry["kept"] = True
        self.steps.append(entry)
        return trial

    def _met(self, trial: _Trial) -> bool:
        value = output_psnr(trial.report)
        return value is not None and value >= self.target

    def _candidates(self, current: _Trial) -> list[str]:
        """The next layers to move: the worst of the current report that are eligible."""
        rank = self.rank
        if rank is None:
            from .compare.sensitivity import rank_sensitive as rank
        layers = current.report.get("layers", [])
        names = {layer["name"] for layer in layers}
        # layers carry the user's names; a tensor only the prepared graph has is there as prepared_name
        self._tensors.update({layer["name"]: layer["prepared_name"] for layer in layers if layer.get("prepared_name")})
        moved = set().union(*(self._move(layer) for layer in current.layers))
        chosen: list[str] = []
        for entry in rank(layers, current.report.get("weights"), None):
            name = entry["name"]
            if name in current.layers or name not in names:
                continue
            more = self._move(name)
            if more <= moved or (self.precision == "float" and moved | more >= self._graph.ops):
                continue
            moved |= more
            chosen.append(name)
            if len(chosen) == self.layers_per_step:
                break
        return chosen

    def _move(self, layer: str) -> set[str]:
        """What moving ``layer`` puts in higher precision: ops (float) or the quantizer's int16 targets."""
        graph = self._graph
        layer = self._tensors.get(layer, layer)
        op = graph.producer.get(layer)
        tensors = {layer, *(graph.inputs.get(op, []) if op else [])}
        if self.precision == "int16":
            return self.trials.format.int16_targets(tensors & self._quantized, graph)
        return {n for t in tensors for n in (graph.producer.get(t), *graph.readers.get(t, [])) if n}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 4)

