"""TFLite models on LiteRT: ai-edge-quantizer, delegates and accelerators.

A float model without ``--int8`` is quantized with ai-edge-quantizer
(:func:`~qbench.host.quantize.tflite.quantize_tflite`); the float model compared on the device is
the one the user gave, even when the quantizer needed a repaired copy, except when that copy
rewrote custom ops: LiteRT runs the user's model then only with XNNPACK, and the copy (checked
against it) is compared, as ``model.float.tflite``. Trials of ``fix`` and ``sensitivity`` are
recipes quantized over one kept calibration (:mod:`~qbench.host.quantize.tflite_edit`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from qbench.protocols.messages import HelloReply, LiteRTRunnerConfig, StructureRequest

from ..compare import weights
from ..compare.tflite_matching import match_tflite
from ..compare.tflite_matching import output_structures as tflite_output_structures
from ..data import sample_shapes
from ..errors import UserError
from ..models import InputSpec, ModelInfo, inspect_model
from ..quantize import tflite as tflite_quant
from ..quantize import tflite_ranges
from ..quantize.prepare import Prepared, resolve_input_shapes
from ..quantize.tflite_edit import RecipeGraph
from .base import RuntimeChoice, given_choices, note_control_flow, refuse

if TYPE_CHECKING:
    from ..inventory import Device
    from ..run_state import UI, RunSettings, RunState

#: the float reference qbench writes when the user's float model needs a rewrite to run on plain LiteRT
FLOAT_NAME = "model.float.tflite"
#: --activation-type -> ai-edge-quantizer recipe
RECIPES = {"int8": "static_wi8_ai8", "int16": "static_wi8_ai16"}
#: delegates that need no library: capturing with one drops the timed delegate's library and options
_BUILTIN_DELEGATES = ("xnnpack", "none")
#: LiteRT CompiledModel accelerators (--accelerator); the agent's probe says which work on the device
ACCELERATORS = ("cpu", "gpu", "npu")
#: the agent runtime whose providers are the accelerators that work
COMPILED_RUNTIME = "litert-compiled"


class TFLiteFormat:
    name = "tflite"
    runtime = "tflite"
    int8_name = "model.int8.tflite"
    methods = tuple(tflite_quant.METHODS)
    fix_methods = tflite_ranges.RANGES  # the ones that differ in activation ranges, which fix can swap per tensor
    note = (f"activation ranges over the calibration samples: minmax = the extremes for tensors of at most "
            f"{tflite_ranges.SMALL} elements per sample, the moving average for larger ones; extremes = the extremes "
            "for all; moving-average = ai-edge-quantizer's own (a 0.95 moving average of each sample's min/max). "
            "Weights: octav, mse, gptq = ai-edge-quantizer's OCTAV, MSE, GPTQ (mse and gptq on the ops with weights "
            "it registers them for), min/max otherwise; " + tflite_quant.NO_HISTOGRAMS)

    def runner(self, device: Device, choice: RuntimeChoice) -> LiteRTRunnerConfig:
        refuse(given_choices(choice, ("providers",)), "TFLite", "LiteRT runs with --delegate or --accelerator")
        accelerator = (choice.accelerator or device.accelerator or "").lower() or None
        if accelerator is not None and accelerator not in ACCELERATORS:
            raise UserError(f"--accelerator must be {', '.join(ACCELERATORS[:-1])} or {ACCELERATORS[-1]}, "
                            f"not {choice.accelerator!r}")
        return LiteRTRunnerConfig(threads=choice.threads or device.threads, accelerator=accelerator,
                                  **_delegate_fields(device, choice))

    def check(self, settings: RunSettings) -> None:
        if not isinstance(settings.runner, LiteRTRunnerConfig):
            raise UserError(f"a TFLite model runs on LiteRT, not with a {settings.runner.runtime} runner")
        refuse([option for option, given in (("--equalize", settings.equalize),
                                             ("--bias-correction", settings.bias_correction),
                                             ("--per-tensor", not settings.per_channel),
                                             ("--reduce-range", settings.reduce_range)) if given],
               "TFLite", "ai-edge-quantizer quantizes weights per channel, and neither equalizes nor corrects biases")
        if settings.activation_type not in RECIPES:
            raise UserError(f"--activation-type for a TFLite model is int8 or int16, not {settings.activation_type!r}")
        tflite_quant.check_method(settings.calibration_method)

    def prepare(self, state: RunState, ui: UI, int8: ModelInfo | None,
                calibration: Callable[[], dict[str, np.ndarray]],
                hellos: Callable[[], Mapping[str, HelloReply | None]]) -> tuple[Path, Path]:
        s = state.settings
        float_info = state.float_info = inspect_model(s.model)
        if int8 is None:
            state.stage = "quantize"
            ui.stage("quantize")
            result = tflite_quant.quantize_tflite(float_info.path, s.out_dir / self.int8_name, calibration(),
                                                  RECIPES[s.activation_type], debug=s.debug,
                                                  method=s.calibration_method)
            notes = [f"quantizer input: {note}" for note in result.notes]
            if result.float_model is not None:
                path, note = write_float_reference(s.out_dir, result.prepared)
                float_info = state.float_info = inspect_model(path)
                notes.append(note)
            for note in notes:
                ui.note(note)
                state.notes.append(note)
            int8 = inspect_model(result.path)
            state.calibrated = lambda: RecipeGraph(result.prepared, Path(s.model).name, RECIPES[s.activation_type],
                                                   s.calibration_method, result.qsvs, result.path, s.debug)
        state.int8_info = int8
        state.stage = "match"
        state.matching = match_tflite(float_info.path, int8.path)
        note_control_flow(state, ui)
        return Path(float_info.path), Path(int8.path)

    def device_settings(self, settings: RunSettings, hellos: Callable[[], Mapping[str, HelloReply | None]],
                        ui: UI) -> None:
        """ai-edge-quantizer's recipes decide nothing by the device."""

    def weight_table(self, float_path: Path, int8_path: Path) -> weights.WeightTable:
        return weights.weight_table(*weights.tflite_weights(float_path, int8_path))

    def capture_runner(self, settings: RunSettings) -> LiteRTRunnerConfig:
        """The timed runner, or the one ``--capture-delegate`` names.

        Always on the Interpreter: LiteRT's CompiledModel (``accelerator``) exposes no intermediate tensor.
        """
        runner, delegate = dataclasses.replace(settings.runner, accelerator=None), settings.capture_delegate
        if delegate is None:
            return runner
        if delegate.lower() in _BUILTIN_DELEGATES:
            return dataclasses.replace(runner, delegate=delegate.lower(), delegate_path=None, delegate_options={})
        return dataclasses.replace(runner, delegate=delegate)

    def delegate_libraries(self, settings: RunSettings) -> list[str]:
        paths = (settings.runner.delegate_path, self.capture_runner(settings).delegate_path)
        return list(dict.fromkeys(p for p in paths if p))

    def check_device(self, runner: LiteRTRunnerConfig, runtimes: dict[str, Any]) -> None:
        """A named delegate or accelerator that is not on the device. A delegate given by library path
        is left to the agent, which loads it (and names what is available if it cannot)."""
        if runner.accelerator:
            if COMPILED_RUNTIME not in runtimes:
                raise UserError(f"LiteRT accelerator {runner.accelerator!r} is not available on the device: its "
                                "LiteRT has no working CompiledModel API; available: none")
            available = runtimes[COMPILED_RUNTIME].providers
            if runner.accelerator.lower() not in available:
                raise UserError(f"LiteRT accelerator {runner.accelerator!r} is not available on the device; "
                                f"available: {', '.join(available)}")
        if runner.delegate_path or self.runtime not in runtimes:
            return
        available = runtimes[self.runtime].providers
        if (runner.delegate or "xnnpack").lower() not in available:
            raise UserError(f"TFLite delegate {runner.delegate!r} is not available on the device; available: "
                            f"{', '.join(available)} (or give its library with --delegate-path)")

    def prepare_float(self, settings: RunSettings) -> Prepared:
        s = settings
        info = inspect_model(s.model)
        shapes, notes = resolve_input_shapes(info.inputs, s.input_shapes, Path(s.model).name,
                                             sample_shapes(s.data, s.calibration))
        inputs = [InputSpec(name=i.name, dtype=i.dtype, shape=tuple(shapes[i.name])) for i in info.inputs]
        prepared = tflite_quant.prepare_tflite(Path(s.model).read_bytes(), Path(s.model).name, shapes)
        notes += [f"quantizer input: {note}" for note in prepared.notes]
        path = Path(s.model)
        if prepared.needs_reference:  # plain LiteRT runs only the rewritten or resized float model
            path, note = write_float_reference(s.out_dir, prepared)
            notes.append(note)
        return Prepared(path=path, notes=notes, input_shapes=shapes, inputs=inputs)

    def trial_settings(self, method: str, base: RunSettings) -> dict[str, Any]:
        recipe = RECIPES[base.activation_type]
        return {
            "method": method,
            "recipe": recipe,
            "ranges": tflite_quant.METHODS[method][1],
            "quantizer_recipe": tflite_quant.tflite_recipe(recipe, method),
        }

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        return tflite_quant.quantize_with_recipe(
            settings["float_path"], out_path, calibration, settings["quantizer_recipe"], debug,
            settings.get("ranges", "moving-average")).path  # settings from before ranges were a choice

    def calibrated(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                   debug: bool) -> RecipeGraph:
        float_path = Path(settings["float_path"])
        prepared = tflite_quant.prepare_tflite(float_path.read_bytes(), float_path.name,
                                               tflite_quant.calibration_shapes(calibration))
        recipe = settings["quantizer_recipe"]
        qsvs = tflite_quant.calibrate_prepared(prepared, float_path.name, calibration, recipe, settings["ranges"], debug)
        path = tflite_quant.quantize_calibrated(prepared, float_path.name, out_path, recipe, qsvs, debug)
        return RecipeGraph(prepared, float_path.name, settings["recipe"], settings["method"], qsvs, path, debug)

    def run_trial_graph(self, state: RunState) -> RecipeGraph | None:
        return None if state.settings.int8 is not None or state.calibrated is None else state.calibrated()

    def bias_corrected(self, graph: RecipeGraph, out_path: Path, calibration: Mapping[str, np.ndarray]) -> None:
        return None  # ai-edge-quantizer has no bias correction

    def output_structures(self, float_path: Path) -> dict[str, StructureRequest]:
        return tflite_output_structures(float_path)

    def describe(self, method: str) -> dict[str, Any]:
        algorithm, ranges = tflite_quant.METHODS[method]
        return {"algorithm": algorithm, "activation_ranges": ranges}


def write_float_reference(out_dir: Path, prepared: tflite_quant.PreparedTFLite) -> tuple[Path, str]:
    """Writes the float model compared when plain LiteRT cannot run the user's as it is
    (:attr:`~qbench.host.quantize.tflite.PreparedTFLite.needs_reference`); returns its path and the
    note that says why."""
    path = Path(out_dir) / FLOAT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prepared.reference)
    why = []
    if prepared.rewritten_from is not None:
        why.append("its custom ops rewritten (same outputs under XNNPACK; plain LiteRT cannot run the given one)")
    if prepared.resized_inputs:
        why.append(f"the data's shape as the default of its dynamic input(s) {', '.join(prepared.resized_inputs)} "
                   "(the given one does not load at its own default)")
    return path, f"float reference: {FLOAT_NAME}, the model with {' and '.join(why)}"


def _delegate_fields(device: Device, choice: RuntimeChoice) -> dict[str, Any]:
    """The delegate fields: the user's over the device's.

    The device's ``delegate_path`` and ``delegate_options`` go with the device's delegate only: another
    ``--delegate`` starts from none. ``--delegate-option key=value`` entries are added over the device's.

    Raises:
        UserError: an option not of the form ``key=value``.
    """
    parsed = {}
    for item in choice.delegate_options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--delegate-option {item!r}: expected key=value")
        parsed[key.strip()] = value
    same = choice.delegate is None or choice.delegate == device.delegate
    return {
        "delegate": choice.delegate or device.delegate,
        "delegate_path": choice.delegate_path or (device.delegate_path if same else None),
        "delegate_options": {**(device.delegate_options if same else {}), **parsed},
    }
