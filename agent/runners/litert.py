"""LiteRT (TFLite) runner: ``ai-edge-litert``, or ``tflite_runtime`` on boards that only have that.

Delegates (``LiteRTRunnerConfig.delegate``):

* ``"xnnpack"`` (default, also for ``None``): LiteRT's default CPU delegate.
* ``"none"``: builtin kernels only (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``).
* any other name: an external delegate library, ``LiteRTRunnerConfig.delegate_path`` or, for the names in
  :data:`EXTERNAL_DELEGATES`, its usual soname; ``delegate_options`` are passed to it. XNNPACK is
  off then, so that what the external delegate does not take runs on the builtin kernels.

Capture: with ``extra_outputs`` the interpreter keeps every intermediate tensor
(``experimental_preserve_all_tensors``). Tensors computed inside a delegate partition are never
written to the interpreter's memory; they are listed in :attr:`LiteRTRunner.unobservable` and left
out of :meth:`~LiteRTRunner.infer`'s result ("inside delegate partition, not observable").

Values are returned raw (int8/int16/uint8 as stored), as :mod:`qbench.agent.capture` expects them
with ``CapturePair.qparams``; :meth:`LiteRTRunner.qparams` gives a tensor's quantization, and with
``dequantize=True`` every extra output comes back as float32 instead.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from qbench.protocols.messages import ErrorCode, ProtocolError, QParams, LiteRTRunnerConfig, RuntimeInfo

from .. import capture
from .base import OpTime, ProfilingUnavailable, Runner, TensorSpec


def _import_interpreter() -> tuple[Any, str]:
    """The interpreter module and the name of the package that provided it."""
    try:
        from ai_edge_litert import interpreter

        return interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter, "tflite-runtime"
    # A wheel built against numpy 1 fails on numpy 2 with either of these, after printing a warning.
    except (ImportError, AttributeError) as exc:
        if importlib.util.find_spec("tflite_runtime") is not None and int(np.__version__.split(".")[0]) >= 2:
            raise ProtocolError(
                ErrorCode.RUNTIME_MISSING,
                f"tflite_runtime {_version('tflite-runtime')} cannot load with numpy {np.__version__}: it is built "
                "against numpy 1. Install ai-edge-litert (pip install ai-edge-litert), or numpy<2 to keep "
                f"tflite_runtime ({exc})",
            ) from exc
        raise ImportError(
            "neither ai-edge-litert nor tflite_runtime is installed (pip install ai-edge-litert)"
        ) from exc


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


tfl, BACKEND = _import_interpreter()

#: external delegates found by name alone: name -> library soname
EXTERNAL_DELEGATES = {
    "edgetpu": "libedgetpu.so.1",  # Coral Edge TPU
    "ethos-u": "libethosu_delegate.so",  # Arm Ethos-U (NXP i.MX 93)
    "vx": "libvx_delegate.so",  # VeriSilicon NPU (NXP i.MX 8M Plus)
    "armnn": "libarmnnDelegate.so",  # Arm NN (Mali GPU / Neon CPU)
    "qnn": "libQnnTFLiteDelegate.so",  # Qualcomm AI Engine Direct
}
_LIB_DIRS = ["/usr/lib", "/usr/local/lib", "/lib", "/usr/lib/*-linux-gnu", "/lib/*-linux-gnu"]
_BUILTIN = ["xnnpack", "none"]
#: converted input feeds kept (a benchmark cycles over a few sample arrays)
_CACHE_SIZE = 64
#: the op name LiteRT gives the node that replaces a delegated partition
_DELEGATE_OP = "DELEGATE"


def _find_library(soname: str) -> str | None:
    """The path of ``soname`` in LD_LIBRARY_PATH or the usual library directories (no subprocess)."""
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + _LIB_DIRS
    for pattern in dirs:
        for directory in glob.glob(pattern):
            path = os.path.join(directory, soname)
            if os.path.exists(path):
                return path
    return None


def available_delegates() -> list[str]:
    """``xnnpack``, ``none`` and the :data:`EXTERNAL_DELEGATES` whose library is installed."""
    return _BUILTIN + [name for name, soname in EXTERNAL_DELEGATES.items() if _find_library(soname)]


def runtime_info() -> RuntimeInfo:
    return RuntimeInfo(version=f"{_version(BACKEND)} ({BACKEND})", providers=available_delegates())


def dequantize(q: np.ndarray, scales: Sequence[float], zero_points: Sequence[int], axis: int = 0) -> np.ndarray:
    """float32 ``(q - zero_point) * scale``; per channel along ``axis`` when there are several scales."""
    qp = QParams(scale=[float(x) for x in scales], zero_point=[int(z) for z in zero_points], axis=axis)
    return capture.dequantize(q, qp).astype(np.float32)


class Partitions(NamedTuple):
    """How a delegate split a model: see :func:`delegate_partitions`."""

    delegated: int  # the model's nodes the partitions replaced
    total: int  # the model's nodes
    partitions: int
    hidden: set[int]  # tensors computed inside a partition and never written
    outside: dict[str, int]  # op type -> nodes left to LiteRT's builtin kernels


def delegate_partitions(nodes: Sequence[Mapping[str, Any]]) -> Partitions:
    """How the delegate split the model, from the interpreter's nodes.

    LiteRT keeps the replaced nodes and appends one DELEGATE node per partition, whose inputs and
    outputs are the partition's boundary. Walking back from a partition's outputs to its inputs
    through the original nodes finds the nodes it replaced; their outputs that are not partition
    outputs are never written (hidden).

    Args:
        nodes: ``Interpreter._get_ops_details()``: dicts with ``op_name``, ``inputs``, ``outputs``.
    """
    originals = [n for n in nodes if n["op_name"] != _DELEGATE_OP]
    partitions = [n for n in nodes if n["op_name"] == _DELEGATE_OP]
    producer = {int(t): k for k, n in enumerate(originals) for t in n["outputs"]}
    covered: set[int] = set()
    visible: set[int] = set()
    for part in partitions:
        boundary = {int(t) for t in part["inputs"]}
        visible.update(int(t) for t in part["outputs"])
        stack = [producer[int(t)] for t in part["outputs"] if int(t) in producer]
        while stack:  # a node is expanded once (covered), so this ends after at most every edge
            k = stack.pop()
            if k in covered:
                continue
            covered.add(k)
            inner = [int(t) for t in originals[k]["inputs"] if int(t) not in boundary]
            stack.extend(producer[t] for t in inner if t in producer)
    hidden = {int(t) for k in covered for t in originals[k]["outputs"]} - visible
    outside: dict[str, int] = {}
    for k, node in enumerate(originals):
        if k not in covered:
            outside[node["op_name"]] = outside.get(node["op_name"], 0) + 1
    return Partitions(len(covered), len(originals), len(partitions), hidden, outside)


@dataclass
class DelegateCoverage:
    """How much of the graph a delegate took: ``delegated_ops`` of the model's ``total_ops``."""

    delegate: str
    delegated_ops: int
    total_ops: int
    partitions: int
    outside: dict[str, int]  # op type -> nodes the delegate did not take

    @property
    def fraction(self) -> float:
        return self.delegated_ops / self.total_ops if self.total_ops else 0.0


class LiteRTRunner(Runner):
    """One LiteRT interpreter on subgraph 0, by tensor indices (models without signature defs work).

    After :meth:`load`, :attr:`coverage` tells what the delegate took (None if the runtime does not
    expose its nodes) and :attr:`unobservable` lists the requested extra outputs that a delegate
    partition hides.

    Args:
        dequantize: return extra outputs as float32, dequantized with the tensor's own parameters.
    """

    def __init__(
        self, model_path: str, config: LiteRTRunnerConfig, extra_outputs: Sequence[str] = (), dequantize: bool = False
    ):
        super().__init__(model_path, config, extra_outputs)
        self.dequantize = dequantize
        self.coverage: DelegateCoverage | None = None
        self._feeds = FeedCache()

    # ---- load -------------------------------------------------------------------

    def _load_impl(self) -> None:
        check_flatbuffer(self.model_path)
        self._delegate = (self.config.delegate or "xnnpack").lower()
        kwargs: dict[str, Any] = {
            "model_path": self.model_path,
            "num_threads": self.config.threads,
            "experimental_op_resolver_type": tfl.OpResolverType.BUILTIN,
        }
        if self._delegate == "none":
            kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif self._delegate != "xnnpack":
            kwargs["experimental_delegates"] = [self._load_external()]
            kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if self.extra_outputs:
            kwargs["experimental_preserve_all_tensors"] = True
        try:
            with warnings.catch_warnings():
                # preserve_all_tensors with XNNPACK warns "for debugging only": capture is debugging.
                warnings.simplefilter("ignore", UserWarning)
                self.interpreter = tfl.Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.MODEL_INVALID, f"LiteRT could not load the model: {exc}") from exc
        self._refresh_details()
        self._index = {}
        for detail in self.interpreter.get_tensor_details():
            self._index.setdefault(detail["name"], detail["index"])
        unknown = [n for n in self.extra_outputs if n not in self._index]
        if unknown:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"tensor(s) not in the model: {unknown}")
        self.coverage, hidden = self._delegation()
        self.unobservable = [n for n in self.extra_outputs if self._index[n] in hidden]
        self._extras = [(n, self._index[n]) for n in self.extra_outputs if n not in self.unobservable]
        details = self.interpreter._get_tensor_details
        self._extra_qp = {n: tensor_qparams(details(i, 0)) if self.dequantize else None for n, i in self._extras}

    def _load_external(self) -> Any:
        path = self.config.delegate_path or EXTERNAL_DELEGATES.get(self._delegate)
        if not path:
            raise ProtocolError(
                ErrorCode.PROVIDER_MISSING,
                f"unknown TFLite delegate {self._delegate!r} and no delegate_path given; "
                f"available: {available_delegates()}",
            )
        try:
            # Loading the library first keeps LiteRT's Delegate from half-initialising on a missing file.
            ctypes.CDLL(path)
            return tfl.load_delegate(path, {k: str(v) for k, v in (self.config.delegate_options or {}).items()})
        except (ValueError, OSError) as exc:
            raise ProtocolError(
                ErrorCode.PROVIDER_MISSING,
                f"TFLite delegate {self._delegate!r} could not be loaded from {path}: {exc}; "
                f"available: {available_delegates()}",
            ) from exc

    def _refresh_details(self) -> None:
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()

    def _delegation(self) -> tuple[DelegateCoverage | None, set[int]]:
        try:
            nodes = self.interpreter._get_ops_details()  # no public API lists the execution plan
        except (AttributeError, ValueError, RuntimeError):
            return None, set()
        split = delegate_partitions(nodes)
        name = self._delegate if split.partitions else "none"
        return DelegateCoverage(name, split.delegated, split.total, split.partitions, split.outside), split.hidden

    # ---- interface --------------------------------------------------------------

    def _inputs_impl(self) -> list[TensorSpec]:
        return [tensor_spec(d) for d in self._in]

    def _outputs_impl(self) -> list[TensorSpec]:
        return [tensor_spec(d) for d in self._out]

    def _providers_used_impl(self) -> list[str]:
        """The delegate if it took any node, and ``cpu`` if builtin kernels run the rest."""
        cov = self.coverage
        if cov is None:
            return [self._delegate]
        used = [cov.delegate] if cov.delegated_ops else []
        return used + (["cpu"] if cov.delegated_ops < cov.total_ops else [])

    def delegation(self) -> dict[str, Any]:
        self._check_loaded()
        cov = self.coverage
        if cov is None:
            return {}
        return {"delegate": cov.delegate, "delegated_ops": cov.delegated_ops, "total_ops": cov.total_ops,
                "fraction": cov.fraction, "partitions": cov.partitions, "outside": cov.outside}

    def qparams(self, name: str) -> QParams | None:
        """The quantization of tensor ``name`` (None for a float or unquantized tensor)."""
        self._check_loaded()
        if name not in self._index:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"tensor {name!r} not in the model")
        return tensor_qparams(self.interpreter._get_tensor_details(self._index[name], 0))

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            resized = False
            for detail in self._in:
                if tuple(feeds[detail["name"]].shape) != tuple(detail["shape"]):
                    self.interpreter.resize_tensor_input(detail["index"], list(feeds[detail["name"]].shape))
                    resized = True
            if resized:
                self.interpreter.allocate_tensors()
                self._refresh_details()
            for detail in self._in:
                self.interpreter.set_tensor(detail["index"], self._feeds.converted(feeds[detail["name"]], detail))
            self.interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise ProtocolError(ErrorCode.BAD_INPUT, f"LiteRT run failed: {exc}") from exc
        result = {d["name"]: self.interpreter.get_tensor(d["index"]) for d in self._out}
        for name, index in self._extras:
            value = self.interpreter.get_tensor(index)
            qp = self._extra_qp[name]
            result[name] = dequantize(value, qp.scale, qp.zero_point, qp.axis or 0) if qp else value
        return result


    def _profile_impl(self, feeds: Sequence[Mapping[str, np.ndarray]], runs: int, on_run) -> list[OpTime]:
        # ai-edge-litert 2.3's Interpreter has no profiler method (its op profiler is C++ only, used by
        # the benchmark_model tool), and tflite_runtime has none either.
        raise ProfilingUnavailable("LiteRT's Python API exposes no op profiler")


class FeedCache:
    """Feeds in their input's dtype (:func:`to_input`), kept per feed array so that timed runs measure
    LiteRT, not numpy. A feed array changed in place after a call is not converted again."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def converted(self, value: np.ndarray, detail: dict) -> np.ndarray:
        if value.dtype == detail["dtype"]:
            return value
        key = (id(value), detail["index"])
        hit = self._cache.get(key)
        if hit is None or hit[0] is not value:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            hit = self._cache[key] = (value, to_input(value, detail))  # holding value keeps its id unique
        return hit[1]


def check_flatbuffer(path: str) -> None:
    """A clear error for a file that is not a TFLite flatbuffer (e.g. an .onnx given to this runtime)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError as exc:
        raise ProtocolError(ErrorCode.MODEL_MISSING, f"model file {path} not found") from exc
    if head[4:8] != b"TFL3":
        raise ProtocolError(
            ErrorCode.MODEL_INVALID,
            f"{os.path.basename(path)} is not a TFLite model (no TFL3 identifier); an ONNX model needs the "
            "onnxruntime runtime",
        )


def tensor_qparams(detail: dict) -> QParams | None:
    qp = detail["quantization_parameters"]
    if len(qp["scales"]) == 0:
        return None
    return QParams(
        scale=[float(s) for s in qp["scales"]],
        zero_point=[int(z) for z in qp["zero_points"]],
        axis=int(qp["quantized_dimension"]) if len(qp["scales"]) > 1 else None,
        dtype=np.dtype(detail["dtype"]).name,
    )


def to_input(value: np.ndarray, detail: dict) -> np.ndarray:
    """``value`` in the input's dtype; float values for an integer input are quantized with its params."""
    dtype = np.dtype(detail["dtype"])
    if value.dtype == dtype:
        return value
    qp = detail["quantization_parameters"]
    if np.issubdtype(value.dtype, np.floating) and np.issubdtype(dtype, np.integer) and len(qp["scales"]):
        info = np.iinfo(dtype)
        q = np.rint(value.astype(np.float64) / float(qp["scales"][0])) + int(qp["zero_points"][0])
        return np.clip(q, info.min, info.max).astype(dtype)
    return value.astype(dtype)


def tensor_spec(detail: dict) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) == len(detail["shape"]) else detail["shape"]
    return TensorSpec(
        name=detail["name"], dtype=np.dtype(detail["dtype"]).name, shape=[int(d) if d >= 0 else None for d in dims]
    )
