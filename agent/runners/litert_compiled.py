"""LiteRT's CompiledModel API on a hardware accelerator (``LiteRTRunnerConfig.accelerator``): timing only.

``accelerator`` ``cpu`` compiles for LiteRT's CPU accelerator (XNNPACK; the ops it does not take run
on LiteRT's builtin kernels). ``gpu`` and ``npu`` first compile for that accelerator alone, which
LiteRT refuses unless it takes every op; when refused, the model is compiled for it with the CPU
as fallback, the way an application deploys it, and :meth:`CompiledModelRunner.delegation` says
so (LiteRT does not tell how many ops the accelerator took then).

CompiledModel runs signatures only and exposes no intermediate tensor, so this runner has no
capture (``extra_outputs``): capture runs on the Interpreter (:mod:`.litert`). A model without
signature def runs: LiteRT gives it a placeholder signature over subgraph 0's inputs and outputs.
Tensors are named as the Interpreter names them (the tensor names, not the signature's), and
integer inputs fed with floats are quantized with the input's scale and zero point, as there.
"""

from __future__ import annotations

import mmap
from importlib import metadata
from typing import Any, Mapping, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options

from qbench.protocols.messages import ErrorCode, ProtocolError, LiteRTRunnerConfig, RuntimeInfo

from .base import OpTime, ProfilingUnavailable, Runner, TensorSpec
from .litert import FeedCache, check_flatbuffer, tensor_spec
from .litert_probe import ACCELERATORS, available_accelerators, last_line

#: fb.TensorType -> numpy dtype name, for the tensors TensorBuffer can carry
_TYPES = {fb.TensorType.FLOAT32: "float32", fb.TensorType.FLOAT16: "float16", fb.TensorType.INT32: "int32",
          fb.TensorType.INT8: "int8", fb.TensorType.UINT8: "uint8", fb.TensorType.BOOL: "bool"}


def runtime_info() -> RuntimeInfo:
    """The ai-edge-litert version, and as providers the accelerators that work here."""
    return RuntimeInfo(version=f"{metadata.version('ai-edge-litert')} (CompiledModel)",
                       providers=available_accelerators())


class CompiledModelRunner(Runner):
    """One CompiledModel of the signature over subgraph 0, on ``config.accelerator``."""

    def __init__(self, model_path: str, config: LiteRTRunnerConfig, extra_outputs: Sequence[str] = ()):
        super().__init__(model_path, config, extra_outputs)
        self.fully_accelerated = False
        self.fallback_reason: str | None = None
        self._feeds = FeedCache()

    def _load_impl(self) -> None:
        if self.extra_outputs:
            raise ProtocolError(ErrorCode.BAD_INPUT, "LiteRT's CompiledModel exposes no intermediate tensor: "
                                                     "capture runs on the Interpreter (no accelerator)")
        check_flatbuffer(self.model_path)
        self._accelerator = (self.config.accelerator or "").lower()
        if self._accelerator not in ACCELERATORS:
            raise ProtocolError(ErrorCode.PROVIDER_MISSING, f"unknown LiteRT accelerator {self._accelerator!r}; "
                                                            f"known: {', '.join(ACCELERATORS)}")
        self.model = self._compile()
        signatures = self.model.get_signature_list()
        if not signatures:
            raise ProtocolError(ErrorCode.MODEL_INVALID, "this LiteRT's CompiledModel runs signatures only and the "
                                                         "model has no signature def: run it without an accelerator")
        key, subgraph = _signature(self.model_path)  # None: LiteRT's placeholder signature, the only one
        self._key = key if key in signatures else next(iter(signatures))
        self._sig = self.model.get_signature_index(self._key)
        ins, outs = signatures[self._key]["inputs"], signatures[self._key]["outputs"]
        self._in = _details(self.model_path, subgraph, ins, self.model.get_input_tensor_details(self._key))
        self._out = _details(self.model_path, subgraph, outs, self.model.get_output_tensor_details(self._key))
        self._buffers()

    def _compile(self) -> Any:
        hw = HardwareAccelerator[self._accelerator.upper()]
        cpu = CpuOptions(num_threads=self.config.threads or 0)
        try:
            model = CompiledModel.from_file(self.model_path, options=Options(hw, cpu_options=cpu))
            self.fully_accelerated = model.is_fully_accelerated()
            return model
        except (RuntimeError, ValueError) as exc:
            if hw == HardwareAccelerator.CPU:
                raise ProtocolError(ErrorCode.MODEL_INVALID,
                                    f"LiteRT could not compile the model: {last_line(exc)}") from exc
            self.fallback_reason = last_line(exc)
        try:
            return CompiledModel.from_file(self.model_path,
                                           options=Options(hw | HardwareAccelerator.CPU, cpu_options=cpu))
        except (RuntimeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.MODEL_INVALID, f"LiteRT could not compile the model for {self._accelerator}, "
                                                         f"even with CPU fallback: {last_line(exc)}") from exc

    def _buffers(self) -> None:
        """(Re)creates the I/O buffers, in the layout the model has now."""
        self._inputs = self.model.create_input_buffers(self._sig)
        self._outputs = self.model.create_output_buffers(self._sig)
        current = self.model.get_output_tensor_details(self._key)
        for detail in self._out:
            detail["shape"] = np.array(current[detail["signature_name"]]["shape"])

    def _inputs_impl(self) -> list[TensorSpec]:
        return [tensor_spec(d) for d in self._in]

    def _outputs_impl(self) -> list[TensorSpec]:
        return [tensor_spec(d) for d in self._out]

    def _providers_used_impl(self) -> list[str]:
        """The accelerator, and ``cpu`` when it did not take the whole model."""
        return [self._accelerator] + ([] if self.fully_accelerated or self._accelerator == "cpu" else ["cpu"])

    def delegation(self) -> dict[str, Any]:
        """``{accelerator, fully_accelerated, cpu_fallback, fallback_reason}`` (see the spec)."""
        self._check_loaded()
        return {"accelerator": self._accelerator, "fully_accelerated": self.fully_accelerated,
                "cpu_fallback": self.fallback_reason is not None, "fallback_reason": self.fallback_reason}

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = [self._feeds.converted(feeds[d["name"]], d) for d in self._in]
            resized = False
            for k, (detail, value) in enumerate(zip(self._in, values)):
                if tuple(value.shape) != tuple(detail["shape"]):
                    self.model.resize_input_tensor(k, list(value.shape), self._sig, strict=False)
                    detail["shape"] = np.array(value.shape)
                    resized = True
            if resized:
                self._buffers()
            for buffer, value in zip(self._inputs, values):
                buffer.write(value)
            self.model.run_by_index(self._sig, self._inputs, self._outputs)
            return {d["name"]: buffer.read(int(np.prod(d["shape"])), d["dtype"]).reshape(d["shape"])
                    for d, buffer in zip(self._out, self._outputs)}
        except (ValueError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"LiteRT CompiledModel run failed: {last_line(exc)}") from exc

    def _profile_impl(self, feeds: Sequence[Mapping[str, np.ndarray]], runs: int, on_run) -> list[OpTime]:
        # CompiledModel's profiler (LiteRtCompiledModelGetProfiler) is in the C API only.
        raise ProfilingUnavailable("LiteRT's Python CompiledModel exposes no op profiler")


def _signature(path: str) -> tuple[str | None, int]:
    """The key and subgraph of the model's first signature def, preferring one over subgraph 0 (the one the
    Interpreter runs); (None, 0) without any."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        model = fb.Model.GetRootAs(buf, 0)
        sigs = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
        found = sorted(((s.SubgraphIndex() != 0, i, s.SignatureKey().decode(), s.SubgraphIndex())
                        for i, s in enumerate(sigs)))
    return (found[0][2], found[0][3]) if found else (None, 0)


def _details(path: str, subgraph: int, names: Sequence[str],
             signature: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The signature's tensors ``names`` (in its order) as the Interpreter details them (name, index, dtype,
    shape, shape_signature, quantization_parameters), read from the flatbuffer through mmap, which touches
    only the pages read.

    Raises:
        ProtocolError: a tensor type TensorBuffer cannot carry (e.g. int16, int64).
    """
    details = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = fb.Model.GetRootAs(buf, 0).Subgraphs(subgraph)
        for sig_name in names:
            entry = signature[sig_name]
            tensor = graph.Tensors(int(entry["index"]))
            if tensor.Type() not in _TYPES:
                kind = next((k for k, v in vars(fb.TensorType).items() if v == tensor.Type()), tensor.Type())
                raise ProtocolError(ErrorCode.MODEL_INVALID, f"tensor {entry['name']!r} is {kind}, which LiteRT's "
                                                             "TensorBuffer cannot carry: run it without an accelerator")
            quant = tensor.Quantization()
            scales = quant.ScaleAsNumpy().tolist() if quant is not None and quant.ScaleLength() else []
            zeros = quant.ZeroPointAsNumpy().tolist() if quant is not None and quant.ZeroPointLength() else []
            details.append({
                "name": entry["name"], "signature_name": sig_name, "index": int(entry["index"]),
                "dtype": np.dtype(_TYPES[tensor.Type()]), "shape": np.array(entry["shape"]),
                "shape_signature": (tensor.ShapeSignatureAsNumpy().tolist() if tensor.ShapeSignatureLength()
                                    else list(entry["shape"])),
                "quantization_parameters": {"scales": scales, "zero_points": zeros,
                                            "quantized_dimension": quant.QuantizedDimension() if quant else 0},
            })
    return details
