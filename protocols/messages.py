"""Typed messages of the qbench wire protocol (see ``protocols/README.md``).

Every message is a :class:`Message`: a header (type, id, version, status) with a
``content`` dict, plus raw tensors carried as extra frames. Request and reply
contents are the dataclasses below; :func:`from_dict` builds them from JSON and
ignores unknown fields, so that a newer peer's additions do not break an older one.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

REQUEST = "_request"
REPLY = "_reply"


class MsgType(str, enum.Enum):
    """Request/reply pairs: ``<value>_request`` is answered by ``<value>_reply``."""

    HELLO = "hello"
    MODEL_STATUS = "model_status"
    MODEL_UPLOAD = "model_upload"
    BENCHMARK = "benchmark"
    CAPTURE = "capture"
    EVALUATE = "evaluate"
    SHUTDOWN = "shutdown"


PROGRESS = "progress"  # agent -> host, zero or more before a reply, same id
TENSOR = "tensor"  # agent -> host, a captured tensor (chunk) before a capture reply with save_tensors, same id


class ErrorCode(str, enum.Enum):
    """Typed error codes; the spec lists when each is sent."""

    BAD_MESSAGE = "bad_message"
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    MODEL_MISSING = "model_missing"
    MODEL_CORRUPT = "model_corrupt"
    MODEL_INVALID = "model_invalid"
    RUNTIME_MISSING = "runtime_missing"
    PROVIDER_MISSING = "provider_missing"
    BAD_INPUT = "bad_input"
    WORKER_CRASHED = "worker_crashed"
    WORKER_TIMEOUT = "worker_timeout"
    OUT_OF_MEMORY = "out_of_memory"
    DISK_FULL = "disk_full"
    INTERNAL = "internal"


@dataclass
class ErrorInfo:
    """The content of an error reply: what failed, and on which side."""

    code: str
    message: str
    origin: str = "agent"
    traceback: str | None = None


class ProtocolError(Exception):
    """An error that travels as a typed error reply."""

    def __init__(self, code: ErrorCode | str, message: str, origin: str = "agent"):
        super().__init__(message)
        self.info = ErrorInfo(code=ErrorCode(code).value, message=message, origin=origin)


@dataclass
class TensorDesc:
    """Describes one raw tensor frame: C-contiguous, native little-endian."""

    dtype: str
    shape: list[int]
    name: str = ""


@dataclass
class Message:
    """One protocol message: header fields, JSON content and its tensors."""

    type: str
    id: str
    content: dict[str, Any] = field(default_factory=dict)
    tensors: list[Any] = field(default_factory=list)  # numpy arrays, in frame order
    names: list[str] = field(default_factory=list)  # one name per tensor ("" if unnamed)
    status: str | None = None  # replies only: "ok" | "error"
    version: str = ""


# ---- contents -------------------------------------------------------------------


@dataclass
class RuntimeInfo:
    version: str
    providers: list[str] = field(default_factory=list)


@dataclass
class Limits:
    max_frame_bytes: int
    max_model_bytes: int
    chunk_bytes: int
    max_message_bytes: int = 0  # 1.4: all frames of one request together; 0: not said (before 1.4)
    max_frames: int = 0  # 1.4: tensor frames of one request; 0: not said


@dataclass
class HelloRequest:
    protocol_version: str
    client_version: str = ""
    runtimes: list[str] = field(default_factory=list)  # what the host will run: the agent prepares those workers


@dataclass
class HelloReply:
    protocol_version: str
    agent_version: str
    python: str
    machine: str
    system: str
    cpu_count: int
    total_memory_bytes: int
    runtimes: dict[str, RuntimeInfo]
    limits: Limits
    emulation: dict[str, Any] = field(default_factory=dict)
    cpu_features: list[str] = field(default_factory=list)  # 2.0: int8-relevant CPU features (/proc/cpuinfo)


@dataclass
class ModelRef:
    """A model in the agent's cache, by content. ``format`` is ``onnx`` or ``tflite``."""

    sha256: str
    format: str


@dataclass
class ModelStatusReply:
    present: bool
    size_bytes: int = 0


@dataclass
class ModelUploadRequest:
    """One chunk (the single tensor frame, dtype uint8) of a model at ``offset``."""

    model: ModelRef
    total_bytes: int
    offset: int


@dataclass
class ModelUploadReply:
    received_bytes: int
    complete: bool


@dataclass
class OrtRunnerConfig:
    """How a worker builds an ONNX Runtime session (``runtime`` ``onnxruntime``)."""

    runtime: str = "onnxruntime"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    provider_options: list[dict[str, Any]] = field(default_factory=list)  # one object per provider
    threads: int | None = None
    graph_optimization: str = "all"  # disable | basic | extended | all


@dataclass
class LiteRTRunnerConfig:
    """How a worker builds a LiteRT interpreter or compiled model (``runtime`` ``tflite``)."""

    runtime: str = "tflite"
    threads: int | None = None
    # "xnnpack" (None = xnnpack) | "none" | an external delegate's name (library from delegate_path)
    delegate: str | None = None
    delegate_path: str | None = None  # external delegate library (.so)
    delegate_options: dict[str, Any] = field(default_factory=dict)  # external delegate options
    # benchmarks: time on LiteRT's CompiledModel with this accelerator, "cpu" | "gpu" | "npu";
    # None: the Interpreter (and its delegate). Capture always runs on the Interpreter.
    accelerator: str | None = None


#: One config per runtime, told apart by ``runtime``: a field of another runtime is a bad message
#: (2.0), so a request cannot carry an option that does not apply to the runtime that runs it.
RunnerConfig = Union[OrtRunnerConfig, LiteRTRunnerConfig]
RUNNER_CONFIGS: dict[str, type] = {"onnxruntime": OrtRunnerConfig, "tflite": LiteRTRunnerConfig}


@dataclass
class TimingConfig:
    """Warm-up runs are discarded; then at least ``runs`` and ``min_seconds``, at most the caps."""

    warmup: int = 5
    runs: int = 20
    min_seconds: float = 0.5
    max_runs: int = 10000
    max_seconds: float = 120.0


@dataclass
class BenchmarkRequest:
    """Time one model. Tensors: one per model input, named, leading axis = samples."""

    model: ModelRef
    runner: RunnerConfig = field(default_factory=OrtRunnerConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    timeout_s: float = 600.0
    profile_runs: int = 0  # > 0: per-op kernel times over this many runs of a separate profiling session
    # after timing, run each sample once more and return the model outputs as tensor frames
    return_outputs: bool = False


@dataclass
class LatencyStats:
    init_ms: float
    first_ms: float
    warmup: int
    runs: int
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    samples_ms: list[float]


@dataclass
class MemoryStats:
    """VmHWM of the worker after load and runs, and the same of a worker that only imported the runtime."""

    peak_mb: float
    baseline_mb: float
    delta_mb: float


@dataclass
class BenchmarkReply:
    latency: LatencyStats
    memory: MemoryStats
    providers_used: list[str] = field(default_factory=list)
    # tflite: {"delegate", "delegated_ops", "total_ops", "fraction"}; empty where the runtime has no delegates
    coverage: dict[str, Any] = field(default_factory=dict)
    # per (op type, provider): {op_type, provider, total_ms, calls, mean_ms, share}; empty when not profiled
    profile: list[dict[str, Any]] = field(default_factory=list)
    profile_note: str | None = None  # why ``profile`` is empty although profile_runs > 0
    outputs_omitted: str | None = None  # why the outputs asked for by ``return_outputs`` are not attached


@dataclass
class QParams:
    """Affine quantization of an int8 tensor: real = (q - zero_point) * scale (per channel along ``axis``)."""

    scale: list[float]
    zero_point: list[int]
    axis: int | None = None
    dtype: str = "int8"

    def levels(self) -> tuple[int, int]:
        """The integer range of ``dtype`` (int8 when unknown)."""
        return _LEVELS.get(self.dtype, _LEVELS["int8"])


_LEVELS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}


@dataclass
class CapturePair:
    """One tensor to compare: the float model's ``float_name`` against the int8 model's ``int8_name``.

    ``qparams`` dequantizes an integer int8-side tensor before comparing. ``nbytes`` is
    the captured size per sample of both sides (for budget grouping), None if unknown.
    ``exact`` compares element equality instead of error sums (non-float tensors).
    """

    float_name: str
    int8_name: str
    qparams: QParams | None = None
    nbytes: int | None = None
    exact: bool = False
    structure: StructureRequest | None = None  # 1.4: model outputs: per-slice and argmax figures


@dataclass
class StructureRequest:
    """What to measure of an output's structure on the agent (1.4); see the spec for every figure.

    ``slice_max``: per-slice sums along every axis of 2..slice_max entries. ``class_axis``: top-1 and
    top-``top_k`` agreement of the argmax along this axis (None: not a class output). ``ctc_blank``:
    also read the argmax as a CTC sequence (repeats collapsed, this index dropped) along the longest
    other axis, when that axis has at least ``min_steps`` entries. ``indices``: the output already holds
    class indices (an ArgMax): the CTC read takes them as they are, along the longest axis.
    ``collapse_repeats`` (2.3): False for the scores of an autoregressive decoder, whose repeated
    symbols are symbols (a table's cells): the read drops ``ctc_blank`` but keeps every repeat.
    ``threshold`` (2.3): the output holds probabilities; count the decisions value > threshold of each
    side (None: not a probability output).
    """

    slice_max: int = 64
    class_axis: int | None = None
    top_k: int = 5
    ctc_blank: int | None = None
    min_steps: int = 8
    indices: bool = False
    collapse_repeats: bool = True
    threshold: float | None = None


@dataclass
class SliceStats:
    """Sums per slice (index along ``axis`` of one sample's output), over all samples (1.4)."""

    axis: int
    count: list[int]
    sum_sq_err: list[float]
    sum_sq_float: list[float]
    max_abs_float: list[float]
    float_min: list[float]
    float_max: list[float]
    int8_min: list[float]
    int8_max: list[float]


@dataclass
class StructureStats:
    """The figures a :class:`StructureRequest` asked for (1.4). Counts, never tensors."""

    slices: list[SliceStats] = field(default_factory=list)
    positions: int = 0  # argmax positions compared along class_axis
    top1_agree: int = 0  # positions where the int8 argmax is the float argmax
    topk_agree: int = 0  # positions where the float argmax is among the int8 top_k
    top_k: int = 0
    sequences: int = 0  # CTC sequences read (one per sample and per index of the other axes)
    sequences_equal: int = 0
    float_nonempty: int = 0  # sequences where the float model reads at least one symbol
    int8_nonempty: int = 0
    edit_distance: int = 0  # Σ Levenshtein distance between the float and int8 symbol sequences
    float_symbols: int = 0  # Σ length of the float symbol sequences
    repeats_kept: bool = False  # 2.3: the sequences were read with repeats kept (collapse_repeats false)
    decisions: int = 0  # 2.3, threshold set: elements decided (f > threshold or not; likewise q)
    float_positive: int = 0  # elements where f > threshold
    int8_positive: int = 0  # elements where q > threshold
    both_positive: int = 0  # elements where both are
    error: str | None = None


@dataclass
class CaptureRequest:
    """Run both models on the same inputs and reduce each pair on the agent.

    Tensors: the inputs, as in :class:`BenchmarkRequest`.
    """

    float_model: ModelRef
    int8_model: ModelRef
    pairs: list[CapturePair]
    runner: RunnerConfig = field(default_factory=OrtRunnerConfig)
    budget_bytes: int = 0  # 0: the agent picks it from its available memory (CaptureReply.budget_bytes)
    timeout_s: float = 1800.0
    histogram_bins: int = 0  # > 0: histograms of per-tensor quantized pairs (see PairStats.hist_*)
    save_tensors: bool = False  # stream every captured tensor to the host as tensor messages


@dataclass
class PairStats:
    """Accumulators of one pair over all samples (float64 sums). See the spec for each."""

    count: int = 0
    sum_sq_err: float = 0.0
    sum_sq_float: float = 0.0
    max_abs_float: float = 0.0
    max_abs_err: float = 0.0
    float_min: float | None = None
    float_max: float | None = None
    mismatches: int = 0
    local_sum_sq_err: float | None = None
    clipped: int | None = None
    graph_altered: bool = False
    error: str | None = None
    unobservable: bool = False  # inside a delegate partition: the runtime never writes it, nothing compared
    float_nan: int = 0  # 1.4: NaN elements of the float model's tensor (counted when a sum is not finite)
    float_inf: int = 0  # 1.4: infinite elements of the float model's tensor
    int8_nan: int = 0  # 1.4: NaN elements of the int8 model's tensor, dequantized
    int8_inf: int = 0  # 1.4: infinite elements of the int8 model's tensor, dequantized
    fused: str | None = None  # the deployed graph no longer has it: "fused into QLinearConv <node>"; nothing compared
    hist_range: list[float] | None = None
    hist_float: list[int] | None = None
    hist_int8: list[int] | None = None
    structure: StructureStats | None = None  # 1.4: pairs with a StructureRequest


@dataclass
class CaptureReply:
    stats: list[PairStats]
    groups: list[list[int]]
    fidelity_max_abs_diff: float | None = None
    peak_mb: float | None = None  # the capture worker's VmHWM
    budget_bytes: int | None = None  # the budget the groups were made for
    phases_s: dict[str, float] = field(default_factory=dict)  # where the capture's wall time went
    passes_planned: int | None = None  # passes the budget planned (len(groups) is the passes run)
    source: str | None = None  # "deployed graph" | "model": where the int8 tensors were read (see the spec)
    source_note: str | None = None  # why the capture left the deployed graph for the model, if it did


@dataclass
class EvaluateRequest:
    """Run a reference model and several candidates on the same inputs in one worker; compare outputs there.

    Tensors: the inputs, as in :class:`BenchmarkRequest`. No timing, no per-layer capture.
    """

    reference: ModelRef
    models: list[ModelRef]
    runner: RunnerConfig = field(default_factory=OrtRunnerConfig)
    timeout_s: float = 1800.0
    structure: dict[str, StructureRequest] = field(default_factory=dict)  # 2.1: by reference output name


@dataclass
class OutputError:
    """One output of one candidate against the reference's, pooled over samples (see the spec)."""

    name: str
    count: int = 0
    mse: float | None = None
    peak: float = 0.0
    sum_sq_float: float = 0.0
    max_abs_err: float = 0.0
    psnr_db: float | None = None
    sqnr_db: float | None = None
    error: str | None = None
    structure: StructureStats | None = None  # 2.1: outputs the request named in ``structure``


#: ``OutputError.error`` of an output whose values (candidate or reference) hold NaN or infinity: a
#: measurement, not a failure; the host judges the candidate broken
NONFINITE_OUTPUT = "non-finite values"


@dataclass
class ModelEvaluation:
    outputs: list[OutputError] = field(default_factory=list)
    error: str | None = None  # the candidate could not be loaded or run: no outputs
    seconds: float = 0.0  # wall time of this candidate: load and every sample


@dataclass
class EvaluateReply:
    results: list[ModelEvaluation]  # one per ``models``, in request order
    reference_seconds: float = 0.0
    peak_mb: float | None = None


@dataclass
class ShutdownReply:
    stopping: bool = True


# ---- dict <-> dataclass ---------------------------------------------------------

T = typing.TypeVar("T")
_PLAIN = (str, int, float, bool, type(None))


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a content dataclass (recursively)."""
    if type(obj) in _PLAIN:  # most values of a message (histogram counts): returned before the slower checks
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def from_dict(cls: type[T], data: Any) -> T:
    """Build ``cls`` from JSON data; unknown keys are ignored, missing ones take defaults.

    Raises:
        ProtocolError: ``bad_message`` when a required field is missing or of the wrong shape.
    """
    try:
        return _convert(cls, data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"bad {getattr(cls, '__name__', 'runner')}: {exc}") from exc


@functools.cache
def _field_types(tp: type) -> tuple[tuple[str, Any], ...]:
    """A dataclass's (field name, type) pairs, resolved once: get_type_hints compiles every annotation."""
    hints = typing.get_type_hints(tp)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(tp))


def _convert(tp: Any, data: Any) -> Any:
    if type(data) is tp and tp in _PLAIN:  # most fields: a value of exactly the declared type, nothing to convert
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise TypeError(f"{tp.__name__} must be an object")
        kwargs = {name: _convert(hint, data[name]) for name, hint in _field_types(tp) if name in data}
        return tp(**kwargs)
    if origin is typing.Union or origin is types.UnionType:
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if set(inner) == set(RUNNER_CONFIGS.values()):
            return _runner_config(data)
        return _convert(inner[0], data)
    if origin is list:
        if not isinstance(data, list):
            raise TypeError("expected a list")
        if args[0] in (int, float, str) and set(map(type, data)) <= {args[0]}:
            return list(data)  # long number lists (histograms) in one pass; anything else is checked per item
        return [_convert(args[0], v) for v in data]
    if origin is dict:
        if not isinstance(data, dict):
            raise TypeError("expected an object")
        return {k: _convert(args[1], v) for k, v in data.items()}
    if tp in (int, float) and isinstance(data, bool):
        raise TypeError("expected a number")
    if tp is float and isinstance(data, int):
        return float(data)
    if tp in (int, float, str, bool) and not isinstance(data, tp):
        raise TypeError(f"expected {tp.__name__}, got {type(data).__name__}")
    return data


def _runner_config(data: Any) -> Any:
    """The runtime's own config (the only union on the wire), refusing the fields of any other."""
    if not isinstance(data, dict):
        raise TypeError("runner must be an object")
    runtime = data.get("runtime", OrtRunnerConfig.runtime)  # missing: the default, as for any field
    cls = RUNNER_CONFIGS.get(runtime)
    if cls is None:
        raise ValueError(f"runner.runtime must be one of {', '.join(RUNNER_CONFIGS)}, not {runtime!r}")
    foreign = sorted(set(data) - {name for name, _ in _field_types(cls)})
    if foreign:
        raise ValueError(f"runner field(s) {', '.join(foreign)} do not apply to runtime {runtime}")
    return _convert(cls, data)
