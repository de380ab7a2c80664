"""What a run does differently for TFLite models: runtime choice, quantizing, matching, capture delegate.

The runtime follows the model's format (read from its bytes), not the device: an ``.onnx`` pair runs on
ONNX Runtime, a ``.tflite`` pair on LiteRT. A float model without ``--int8`` is quantized with
ai-edge-quantizer (:func:`~qbench.host.quantize.tflite.quantize_tflite`); the float model compared
on the device is the one the user gave, even when the quantizer needed a repaired copy, except when
that copy rewrote custom ops: LiteRT runs the user's model then only with XNNPACK, and the copy
(checked against it) is compared, as ``model.float.tflite``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from qbench.protocols.messages import RunnerConfig

from .compare.tflite_matching import match_tflite
from .errors import UserError
from .models import ModelInfo, inspect_model
from .quantize.tflite import check_method, quantize_tflite

if TYPE_CHECKING:
    from .inventory import Device
    from .session import UI, RunSettings, RunState

#: the float reference qbench writes when the user's float model needs a rewrite to run on plain LiteRT
FLOAT_NAME = "model.float.tflite"
#: model format -> the agent runtime that runs it
RUNTIMES = {"onnx": "onnxruntime", "tflite": "tflite"}
#: --activation-type -> ai-edge-quantizer recipe
RECIPES = {"int8": "static_wi8_ai8", "int16": "static_wi8_ai16"}
#: delegates that need no library: capturing with one drops the timed delegate's library and options
_BUILTIN_DELEGATES = ("xnnpack", "none")
#: LiteRT CompiledModel accelerators (--accelerator); the agent's probe says which work on the device
ACCELERATORS = ("cpu", "gpu", "npu")
#: the agent runtime whose providers are the accelerators that work
COMPILED_RUNTIME = "litert-compiled"


def runtime_hint(model: Path) -> str:
    """The runtime a model file will most likely run on, from its name alone (before it is inspected)."""
    return RUNTIMES["tflite" if Path(model).suffix.lower() == ".tflite" else "onnx"]


def runtime_for(settings: RunSettings, float_info: ModelInfo, int8_info: ModelInfo | None) -> str:
    """The runtime of the model pair, after checking that the settings fit its format.

    Raises:
        UserError: float and int8 models of different formats, or a setting the format has no use for.
    """
    if int8_info is not None and int8_info.format != float_info.format:
        raise UserError(
            f"{Path(float_info.path).name} is a {float_info.format} model but --int8 {Path(int8_info.path).name} "
            f"is a {int8_info.format} model: give both models in the same format"
        )
    if float_info.format == "onnx":
        if settings.capture_delegate is not None:
            raise UserError("--capture-delegate is for TFLite models; ONNX Runtime captures with --provider")
        return RUNTIMES["onnx"]
    if int8_info is None:
        if settings.activation_type not in RECIPES:
            raise UserError(f"--activation-type for a TFLite model is int8 or int16, not {settings.activation_type!r}")
        check_method(settings.calibration_method)
    return RUNTIMES["tflite"]


def prepare(
    state: RunState, ui: UI, float_info: ModelInfo, int8_info: ModelInfo | None,
    calibration: Callable[[], dict[str, np.ndarray]],
) -> tuple[Path, Path]:
    """Quantizes the float .tflite unless an int8 one is given, then matches their tensors.

    Args:
        state: the run; its ``float_info``, ``int8_info``, ``matching`` and ``notes`` are filled in.
        ui: where stages and notes go.
        float_info: the user's float model.
        int8_info: the user's int8 model, or None to quantize.
        calibration: gives the calibration samples (called only when quantizing).

    Returns:
        The float and int8 model paths to upload.
    """
    s = state.settings
    state.float_info = float_info
    if int8_info is None:
        state.stage = "quantize"
        ui.stage("quantize")
        result = quantize_tflite(float_info.path, s.out_dir / "model.int8.tflite", calibration(),
                                 RECIPES[s.activation_type], debug=s.debug, method=s.calibration_method)
        notes = [f"quantizer input: {note}" for note in result.notes]
        if result.float_model is not None:
            path, note = write_float_reference(s.out_dir, result.float_model)
            float_info = state.float_info = inspect_model(path)
            notes.append(note)
        for note in notes:
            ui.note(note)
            state.notes.append(note)
        int8_info = inspect_model(result.path)
    state.int8_info = int8_info
    state.stage = "match"
    state.matching = match_tflite(float_info.path, int8_info.path)
    return Path(float_info.path), Path(int8_info.path)


def write_float_reference(out_dir: Path, model: bytes) -> tuple[Path, str]:
    """Writes the float model with its custom ops rewritten, the one compared when plain LiteRT
    cannot run the user's; returns its path and the note that says so."""
    path = Path(out_dir) / FLOAT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model)
    return path, (f"float reference: {FLOAT_NAME}, the model with its custom ops rewritten (same outputs under "
                  "XNNPACK; plain LiteRT cannot run the given one)")


def capture_runner(settings: RunSettings) -> RunnerConfig:
    """The runner config of the capture pass: the timed one, or the one ``--capture-delegate`` names.

    Always on the Interpreter: LiteRT's CompiledModel (``accelerator``) exposes no intermediate tensor.
    """
    runner, delegate = dataclasses.replace(settings.runner, accelerator=None), settings.capture_delegate
    if delegate is None:
        return runner
    if delegate.lower() in _BUILTIN_DELEGATES:
        return dataclasses.replace(runner, delegate=delegate.lower(), delegate_path=None, delegate_options={})
    return dataclasses.replace(runner, delegate=delegate)


def check_delegate(runner: RunnerConfig, runtimes: dict[str, Any]) -> None:
    """Fails before any measurement when a named TFLite delegate or accelerator is not on the device.

    A delegate given by library path is left to the agent, which loads it (and names what is available
    if it cannot).

    Args:
        runner: the run's runner config.
        runtimes: the agent's ``hello`` runtimes (name -> RuntimeInfo).
    """
    _check_accelerator(runner, runtimes)
    if runner.runtime != "tflite" or runner.delegate_path or runner.runtime not in runtimes:
        return
    available = runtimes[runner.runtime].providers
    if (runner.delegate or "xnnpack").lower() not in available:
        raise UserError(f"TFLite delegate {runner.delegate!r} is not available on the device; available: "
                        f"{', '.join(available)} (or give its library with --delegate-path)")


def _check_accelerator(runner: RunnerConfig, runtimes: dict[str, Any]) -> None:
    if runner.runtime != "tflite" or not runner.accelerator:
        return
    if COMPILED_RUNTIME not in runtimes:
        raise UserError(f"LiteRT accelerator {runner.accelerator!r} is not available on the device: its LiteRT has no "
                        "working CompiledModel API; available: none")
    available = runtimes[COMPILED_RUNTIME].providers
    if runner.accelerator.lower() not in available:
        raise UserError(f"LiteRT accelerator {runner.accelerator!r} is not available on the device; available: "
                        f"{', '.join(available)}")


def delegate_fields(device: Device, delegate: str | None, path: str | None, options: list[str]) -> dict[str, Any]:
    """RunnerConfig's delegate fields: the command line's over the device's.

    The device's ``delegate_path`` and ``delegate_options`` go with the device's delegate only: another
    ``--delegate`` starts from none. ``--delegate-option key=value`` entries are added over the device's.

    Raises:
        UserError: an option not of the form ``key=value``.
    """
    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--delegate-option {item!r}: expected key=value")
        parsed[key.strip()] = value
    same = delegate is None or delegate == device.delegate
    return {
        "delegate": delegate or device.delegate,
        "delegate_path": path or (device.delegate_path if same else None),
        "delegate_options": {**(device.delegate_options if same else {}), **parsed},
    }
