"""The state of one run and what it tells the user: shared by the session, the formats and the report.

Kept apart from :mod:`qbench.host.session` so that the modules the session uses (the model
formats, the report's prefetch) and the modules that read a finished run (the report, the CLI)
import the state without importing the session back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from qbench.protocols.messages import BenchmarkReply, CaptureReply, RunnerConfig, TimingConfig

from .compare import matching
from .models import InputSpec, ModelInfo

if TYPE_CHECKING:
    from .report.prefetch import Prefetch

#: ``state.error["code"]`` of a run the user interrupted (Ctrl-C); its report's status is ``interrupted``
INTERRUPTED = "interrupted"


class Deferred:
    """A value computed once, by the first thread that asks for it; the others wait for it."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute, self._lock, self._done, self._value = compute, threading.Lock(), False, None

    def result(self) -> Any:
        with self._lock:
            if not self._done:
                self._value, self._done = self._compute(), True
            return self._value


@dataclass
class RunSettings:
    """Everything that decides a run; recorded in the report so it can be run again."""

    model: Path
    out_dir: Path
    int8: Path | None = None
    device: str = "local"
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    data: Path | None = None
    calibration: Path | None = None
    samples: int = 4
    calibration_samples: int = 16
    calibration_method: str = "minmax"
    activation_type: str = "int8"
    seed: int = 0
    runner: RunnerConfig | None = None  # None: the runtime's defaults (filled in when the run starts)
    timing: TimingConfig = field(default_factory=TimingConfig)
    memory_budget_mb: float | None = None  # MB of tensors per capture pass; None: the agent's choice
    histogram_bins: int = 64  # value histogram bins per per-tensor quantized layer; 0: none
    save_tensors: Path | None = None  # stream every captured tensor into this folder (tensor_store)
    drop_db: float = 6.0
    worst: int = 5
    timeout_s: float = 60.0
    debug: bool = False
    profile_runs: int = 10  # per-op kernel times over this many runs per model on the agent; 0: off
    capture_delegate: str | None = None  # tflite: capture with this delegate instead of the timed one
    return_outputs: bool = False  # keep the model outputs of the timed sessions (state.outputs)
    time_float: bool = True  # False: a caller that already timed this float model skips it
    accuracy_only: bool = False  # no timing, memory or profile runs: the per-layer capture only
    equalize: bool = False  # cross-layer weight equalization of the float model before quantizing
    bias_correction: bool = False  # ONNX: correct each layer's bias by its weights' mean output shift (quantize.bias_correction)
    per_channel: bool = True  # per-channel weight scales; False: one scale per weight tensor
    # ONNX: 7-bit weights (x86 without VNNI: no int16 saturation in u8s8 kernels); None: auto, decided from
    # the device's CPU before qbench quantizes (quantize.reduce_range), which fills in both fields
    reduce_range: bool | None = None
    reduce_range_reason: str | None = None
    user_model: Path | None = None  # the user's own file when ``model`` is qbench's prepared copy of it


@dataclass
class RunState:
    """What a run has produced so far."""

    settings: RunSettings
    stage: str = "start"
    notes: list[str] = field(default_factory=list)
    float_info: ModelInfo | None = None
    int8_info: ModelInfo | None = None
    matching: matching.Matching | None = None
    agent: dict[str, Any] | None = None
    uploaded_bytes: int = 0
    inputs: list[InputSpec] | None = None  # the float model's inputs with every dim fixed
    benchmarks: dict[str, BenchmarkReply] = field(default_factory=dict)
    # "float"/"int8" -> output name -> (samples, ...); only with settings.return_outputs
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    capture: CaptureReply | None = None
    error: dict[str, str] | None = None
    cause: BaseException | None = None  # the exception behind ``error``: --debug shows its traceback
    equalization: dict[str, Any] | None = None  # quantize.equalize's report section, with --equalize
    bias_correction: dict[str, Any] | None = None  # quantize.bias_correction's report section, with --bias-correction
    # ONNX: quantize.kernels.int8_kernels of the int8 model (None if it failed), computed on first ask
    int8_kernels: Deferred | None = None
    # TFLite: the trial graph of the int8 model qbench made (the quantizer's calibration, kept), built on first ask
    calibrated: Callable[[], Any] | None = None
    prefetch: Prefetch | None = None  # report work started at the capture stage
    samples: dict[str, np.ndarray] | None = None  # the evaluation samples, {input: (N, *shape)}
    report: dict[str, Any] | None = None  # built ahead of finish.write_run (ranking_sweep), which then reuses it


class UI:
    """What a run tells the user while it goes; the CLI renders it, tests ignore it."""

    def stage(self, name: str) -> None: ...

    def progress(self, stage: str, done: int, total: int) -> None: ...

    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...
