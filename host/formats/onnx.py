"""ONNX models on ONNX Runtime: qbench's pre-processing, ONNX Runtime's static QDQ quantizer, the
provider chain.

The float model is prepared (static shapes, folded patterns, opset) into ``float.prepared.onnx``
and quantized from there; a user's own int8 model is compared with the float model as given, whose
tensor names it carries. Int16 trial targets are tensors (``TensorQuantOverrides``, quant_type
named by its ``onnxruntime.quantization.QuantType`` member).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from qbench.protocols.messages import HelloReply, OrtRunnerConfig, StructureRequest

from ..compare import matching, names, weights
from ..data import sample_shapes
from ..errors import UserError
from ..models import ModelInfo, inspect_model
from ..quantize import onnx as onnx_quant
from ..quantize import reduce_range
from ..quantize.bias_correction import correct_file
from ..quantize.equalize import equalize_file
from ..quantize.kernels import int8_kernels
from ..quantize.prepare import Prepared, prepare_float
from ..quantize.qdq_edit import QdqGraph
from ..run_state import Deferred
from .base import RuntimeChoice, given_choices, note_control_flow, refuse

if TYPE_CHECKING:
    from ..inventory import Device
    from ..run_state import UI, RunSettings, RunState

log = logging.getLogger("qbench")

#: RuntimeChoice fields that are LiteRT's
_LITERT_CHOICES = ("delegate", "delegate_path", "delegate_options", "accelerator")


class OnnxFormat:
    name = "onnx"
    runtime = "onnxruntime"
    int8_name = "model.int8.onnx"
    methods = onnx_quant.METHODS
    note = None
    fix_methods = ("minmax", "percentile", "entropy")

    def runner(self, device: Device, choice: RuntimeChoice) -> OrtRunnerConfig:
        refuse(given_choices(choice, _LITERT_CHOICES), "ONNX", "ONNX Runtime runs with --provider")
        known = dict(zip(device.provider_names, device.provider_options))
        chain = list(choice.providers or device.provider_names)
        return OrtRunnerConfig(providers=chain, provider_options=[known.get(p, {}) for p in chain],
                               threads=choice.threads or device.threads)

    def check(self, settings: RunSettings) -> None:
        if not isinstance(settings.runner, OrtRunnerConfig):
            raise UserError(f"an ONNX model runs on ONNX Runtime, not with a {settings.runner.runtime} runner")
        refuse(["--capture-delegate"] if settings.capture_delegate is not None else [], "ONNX",
               "ONNX Runtime captures with --provider")
        if settings.calibration_method not in self.methods:
            raise UserError(f"ONNX calibration method {settings.calibration_method!r} is not one of "
                            f"{', '.join(self.methods)}")
        if settings.activation_type not in onnx_quant.ACTIVATION_TYPES:
            raise UserError(f"--activation-type for an ONNX model is {' or '.join(onnx_quant.ACTIVATION_TYPES)}, "
                            f"not {settings.activation_type!r}")

    def prepare(self, state: RunState, ui: UI, int8: ModelInfo | None,
                calibration: Callable[[], dict[str, np.ndarray]],
                hellos: Callable[[], Mapping[str, HelloReply | None]]) -> tuple[Path, Path]:
        s = state.settings
        if int8 is not None:
            # A user's own int8 model names its tensors after the float model as given: compare
            # against that model, not a re-optimized copy whose names may differ.
            state.float_info, state.int8_info = inspect_model(s.model), int8
            float_path, int8_path = Path(s.model), Path(s.int8)
        else:
            float_path = self._prepared(state, ui)
            state.float_info = inspect_model(float_path)
            self.device_settings(s, hellos, ui)
            state.stage = "quantize"
            ui.stage("quantize")
            int8_path = s.out_dir / self.int8_name
            onnx_quant.quantize_onnx(float_path, int8_path, calibration(), method=s.calibration_method,
                                     activation_type=s.activation_type, per_channel=s.per_channel,
                                     reduce_range=s.reduce_range, debug=s.debug)
            if s.bias_correction:
                state.bias_correction = correct_file(int8_path, float_path, calibration())
                note = _bias_note(state.bias_correction)
                ui.note(note)
                state.notes.append(note)
            state.int8_info = inspect_model(int8_path)
        _analyze_kernels(state, int8_path)
        state.stage = "match"
        # parsed once: the weight figures read the same two files (matching.load_model caches them)
        state.matching = matching.match(matching.load_model(float_path), matching.load_model(int8_path))
        user_model = s.user_model or (s.model if s.int8 is None else None)
        if user_model is not None and Path(user_model).resolve() != float_path.resolve():
            import onnx

            # tensors of the prepared copy are reported under the user's names
            names.relabel(state.matching, onnx.load(str(user_model)), matching.load_model(float_path))
        note_control_flow(state, ui)
        return float_path, int8_path

    def device_settings(self, settings: RunSettings, hellos: Callable[[], Mapping[str, HelloReply | None]],
                        ui: UI) -> None:
        """``reduce_range`` auto: 7-bit weights on x86 without VNNI, as the devices' hellos say
        (:func:`qbench.host.quantize.reduce_range.choose`)."""
        if settings.reduce_range_reason is not None:
            return  # decided already: the settings a command's trials share
        settings.reduce_range, settings.reduce_range_reason = reduce_range.choose(
            settings.reduce_range, hellos() if settings.reduce_range is None else {})
        bits = "7-bit weights (reduce range on)" if settings.reduce_range else "8-bit weights (reduce range off)"
        ui.note(f"{bits}: {settings.reduce_range_reason}")

    def _prepared(self, state: RunState, ui: UI) -> Path:
        """The float model qbench quantizes: prepared, and equalized with ``--equalize``."""
        s = state.settings
        prepared = self.prepare_float(s)
        for note in prepared.notes:
            ui.note(note)
        state.notes.extend(prepared.notes)
        if not s.equalize:
            return Path(prepared.path)
        # the equalized model is the float reference: its inner tensors are rescaled
        equalized = s.out_dir / "float.equalized.onnx"
        state.equalization = equalize_file(prepared.path, equalized)
        state.notes.append(f"cross-layer equalization rescaled {len(state.equalization['pairs'])} conv pair(s)")
        return equalized

    def weight_table(self, float_path: Path, int8_path: Path) -> weights.WeightTable:
        return weights.weight_table(*weights.onnx_weights(matching.load_model(float_path),
                                                          matching.load_model(int8_path)))

    def capture_runner(self, settings: RunSettings) -> OrtRunnerConfig:
        return settings.runner

    def delegate_libraries(self, settings: RunSettings) -> list[str]:
        return []

    def check_device(self, runner: OrtRunnerConfig, runtimes: dict[str, Any]) -> None:
        """The agent checks the provider chain itself (``provider_missing`` names the available ones)."""

    def prepare_float(self, settings: RunSettings) -> Prepared:
        s = settings
        return prepare_float(s.model, s.input_shapes, s.out_dir, data_shapes=sample_shapes(s.data, s.calibration),
                             debug=s.debug)

    def trial_settings(self, method: str, base: RunSettings) -> dict[str, Any]:
        return {
            "method": method,
            "activation_type": base.activation_type,
            "per_channel": base.per_channel,
            "reduce_range": base.reduce_range,
            "nodes_to_exclude": [],
            "tensor_overrides": {},
            "bias_correction": base.bias_correction,
        }

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        path = onnx_quant.quantize_onnx(
            settings["float_path"], out_path, calibration, method=settings["method"],
            activation_type=settings["activation_type"], per_channel=settings["per_channel"],
            reduce_range=bool(settings.get("reduce_range")), nodes_to_exclude=settings["nodes_to_exclude"],
            tensor_overrides=_ort_overrides(settings["tensor_overrides"]), debug=debug,
        )
        if settings.get("bias_correction"):
            correct_file(path, Path(settings["float_path"]), calibration)
        return path

    def run_trial_graph(self, state: RunState) -> QdqGraph | None:
        if state.settings.int8 is not None or state.int8_info is None or state.float_info is None:
            return None
        return QdqGraph(Path(state.int8_info.path), Path(state.float_info.path))

    def bias_corrected(self, graph: QdqGraph, out_path: Path, calibration: Mapping[str, np.ndarray]) -> QdqGraph:
        """A copy of ``graph``'s model with corrected biases (quantize.bias_correction); the same ranges."""
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph.path, out_path)
        correct_file(out_path, graph.float_path, calibration)
        return QdqGraph(out_path, graph.float_path)

    def calibrated(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                   debug: bool) -> QdqGraph:
        return QdqGraph(self.quantize(settings, out_path, calibration, debug), settings["float_path"])

    def output_structures(self, float_path: Path) -> dict[str, StructureRequest]:
        return matching.output_structures(matching.load_model(float_path))

    def describe(self, method: str) -> dict[str, Any]:
        return {}


def _analyze_kernels(state: RunState, int8_path: Path) -> None:
    """Which convolutions and matmuls the host's ONNX Runtime runs as int8 kernels (report's int8_coverage).

    Deferred: building that session takes 0.3-0.7 s, which the report's prefetch spends while the device
    captures (never while it times), else the report when it needs the figure."""

    def analyze() -> dict[str, Any] | None:
        try:
            return int8_kernels(int8_path)
        except Exception as exc:  # noqa: BLE001 - the figure is a diagnostic: a model ORT refuses fails later, clearly
            log.debug("int8 kernel analysis failed", exc_info=True)
            state.notes.append(f"int8 coverage not analyzed on the host: {str(exc).splitlines()[0] if str(exc) else exc}")
            return None

    state.int8_kernels = Deferred(analyze)


def _bias_note(section: Mapping[str, Any]) -> str:
    skipped = f", {len(section['skipped'])} left as they were (report.json)" if section["skipped"] else ""
    return (f"bias correction: {section['layers']} layer(s) corrected by their int8 weights' mean output shift "
            f"over {section['samples']} calibration samples{skipped}")


def _ort_overrides(overrides: Mapping[str, list[dict[str, str]]]) -> dict | None:
    """JSON overrides (quant_type by name) as ONNX Runtime takes them (QuantType members)."""
    if not overrides:
        return None
    from onnxruntime.quantization import QuantType

    return {name: [{**o, "quant_type": QuantType[o["quant_type"]]} for o in spec]
            for name, spec in overrides.items()}
