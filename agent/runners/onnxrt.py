"""ONNX Runtime runner.

Extra outputs for the capture pass are appended to the serialized model as protobuf
fields, so the agent needs no ``onnx`` package: a repeated ``GraphProto.output``
(field 12) inside a second ``ModelProto.graph`` (field 7) is merged into the first
by every protobuf parser, and ONNX Runtime infers the types of name-only outputs.

Appended to the user's model, outputs change which kernels ORT fuses. So the capture reads them
from the graph ORT deployed instead: the deployed session writes its optimized graph
(``SessionOptions.optimized_model_filepath``), and the capture session loads that graph with every
optimization off, outputs appended, so it runs the very kernels the deployed session runs.
:mod:`qbench.agent.onnx_graph` finds the user's tensors in it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence

import numpy as np

from qbench.protocols.messages import ErrorCode, ProtocolError, RuntimeInfo

from .. import onnx_graph
from . import ort_profile
from .base import OpTime, Runner, TensorSpec

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def runtime_info() -> RuntimeInfo:
    import onnxruntime as ort

    return RuntimeInfo(version=ort.__version__, providers=list(ort.get_available_providers()))


def append_outputs(model_bytes: bytes, names: Sequence[str]) -> bytes:
    """``model_bytes`` with ``names`` added as graph outputs (protobuf merge of field 7)."""
    graph = b"".join(_field(12, _field(1, name.encode())) for name in names)
    return model_bytes + _field(7, graph)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


class OnnxRuntimeRunner(Runner):
    """One InferenceSession; providers, provider options and threads from the RunnerConfig."""

    _save_to: str | None = None
    _located: dict[str, onnx_graph.Located] = {}
    _from_shape: dict[str, str] = {}  # located tensors in a layout their counterpart's shape tells: why if not

    def save_deployed_graph(self, path: str) -> bool:
        self._save_to = path
        return True

    def _load_impl(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.config.providers if p not in available]
        if missing:
            raise ProtocolError(
                ErrorCode.PROVIDER_MISSING, f"execution provider(s) {missing} not available here; available: {available}"
            )
        options = self._options()
        model: str | bytes = self.model_path  # by path when unmodified: no copy of the bytes in memory
        if self._save_to:
            options.optimized_model_filepath = self._save_to
        exposed = self.extra_outputs
        self._fed: list[str] = []
        if self.extra_outputs and self.deployed_graph:
            model, exposed = self._deployed_with_outputs()
            # ORT already optimized this graph for this device: running it as it is runs the deployed kernels
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        elif self.extra_outputs:
            # Appended outputs come last. A graph input or output is not appended (its value is
            # the feed, or fetched anyway): the CPU provider accepts the duplicate name, OpenVINO's
            # refuses the model ("Duplicate definition of name").
            with open(self.model_path, "rb") as fh:
                data = fh.read()
            inputs, own = onnx_graph.graph_io_names(data)
            self._fed = [name for name in self.extra_outputs if name in inputs]
            exposed = [name for name in self.extra_outputs if name not in inputs and name not in own]
            model = append_outputs(data, exposed)
        if self.extra_outputs:
            # A capture session, never timed. ORT's memory pattern (from the 2nd run on) puts the
            # exposed outputs in one planned block and then copies them out: twice the group in
            # memory. Without an arena, each run's memory goes back to the system, so a pass
            # holds one group of tensors, not the largest one seen. Idle ORT threads do not spin:
            # between runs the reduction threads need the cores (a third less CPU time on the
            # 640x640 detector with 2 cores). None of these changes the kernels.
            options.enable_mem_pattern = False
            options.enable_cpu_mem_arena = False
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = self._session(model, options)
        except Exception as exc:  # ORT raises its own pybind exception types
            if not self._save_to:
                raise _error(exc, ErrorCode.MODEL_INVALID, "onnxruntime could not load the model") from exc
            # Some execution providers compile nodes that cannot be written out: deploy without saving.
            self._save_to = None
            options.optimized_model_filepath = ""
            try:
                self.session = self._session(model, options)
            except Exception as again:
                raise _error(again, ErrorCode.MODEL_INVALID, "onnxruntime could not load the model") from again
        outputs = self.session.get_outputs()
        self._own = outputs[: len(outputs) - len(exposed)]
        self._fetch = [o.name for o in outputs]
        if self._save_to:
            self.deployed_graph = self._save_to if os.path.isfile(self._save_to) else None

    def _session(self, model: str | bytes, options):
        import onnxruntime as ort

        return ort.InferenceSession(model, options, providers=self.config.providers,
                                    provider_options=self.config.provider_options or None)

    def _deployed_with_outputs(self) -> tuple[bytes, list[str]]:
        """The deployed graph with the deployed tensors of :attr:`extra_outputs` appended; sets :attr:`fused`."""
        with open(self.model_path, "rb") as fh:
            original, interface = onnx_graph.read_graph(fh.read())
        with open(self.deployed_graph, "rb") as fh:
            deployed_bytes = fh.read()
        deployed, _ = onnx_graph.read_graph(deployed_bytes)
        found, self.fused = onnx_graph.locate(original, deployed, self.extra_outputs, set(interface))
        for name in self.extra_outputs:  # neither written nor fused: not in the model at all
            if name not in found and name not in self.fused:
                self.fused[name] = "not in the deployed graph"
        self._located = found
        self._from_shape = {name: loc.note for name, loc in found.items() if loc.to_original is onnx_graph.FROM_SHAPE}
        exposed = list(dict.fromkeys(loc.tensor for loc in found.values()))
        return append_outputs(deployed_bytes, exposed), exposed

    def _options(self):
        """SessionOptions from the RunnerConfig, shared by the timed and the profiling session."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[self.config.graph_optimization])
        if self.config.threads:
            options.intra_op_num_threads = self.config.threads
            options.inter_op_num_threads = 1
        return options

    def _inputs_impl(self) -> list[TensorSpec]:
        return [_spec(i) for i in self.session.get_inputs()]

    def _outputs_impl(self) -> list[TensorSpec]:
        return [_spec(o) for o in self._own]

    def _providers_used_impl(self) -> list[str]:
        return list(self.session.get_providers())

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self._fetch, dict(feeds))
        except Exception as exc:
            raise _error(exc, ErrorCode.BAD_INPUT, "onnxruntime run failed") from exc
        out = dict(zip(self._fetch, values))
        out.update((name, np.asarray(feeds[name])) for name in self._fed)
        if not self._located:
            return out
        deployed = out
        out = {o.name: deployed[o.name] for o in self._own}
        for name, loc in self._located.items():  # the user's names, in the user's layout
            value = deployed[loc.tensor]
            out[name] = value if loc.to_original is None or loc.to_original is onnx_graph.FROM_SHAPE \
                else np.ascontiguousarray(value.transpose(onnx_graph.original_axes(loc.to_original, value.ndim)))
        return out

    def in_layout_of(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
        if name not in self._from_shape:
            return value, ""
        placed = onnx_graph.from_shape(value, shape)
        return (placed, "") if placed is not None else (None, self._from_shape[name])

    def _profile_impl(self, feeds: Sequence[Mapping[str, np.ndarray]], runs: int, on_run) -> list[OpTime]:
        """A second session of the unmodified model with ORT's profiler on; its trace file is deleted."""
        import onnxruntime as ort

        options = self._options()
        with tempfile.TemporaryDirectory(prefix="qbench-profile-") as tmp:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, "ort")
            try:
                session = ort.InferenceSession(self.model_path, options, providers=self.config.providers,
                                               provider_options=self.config.provider_options or None)
                for i in range(runs + 1):  # run 0 is the warm-up that summarize() drops
                    session.run(None, dict(feeds[i % len(feeds)]))
                    if i:
                        on_run(i)
                trace = session.end_profiling()
            except Exception as exc:
                raise _error(exc, ErrorCode.BAD_INPUT, "onnxruntime profiling run failed") from exc
            with open(trace, encoding="utf-8") as fh:
                events = json.load(fh)
        return ort_profile.summarize(events, skip_runs=1)


def _error(exc: Exception, code: ErrorCode, what: str) -> ProtocolError:
    """ORT reports allocation failures as generic errors: tell them apart by their text."""
    text = str(exc)
    if "Failed to allocate" in text or "bad_alloc" in text:
        code = ErrorCode.OUT_OF_MEMORY
    return ProtocolError(code, f"{what}: {text.strip()}")


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=_ORT_TYPES.get(arg.type, arg.type), shape=shape)
