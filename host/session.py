"""One run: prepare -> quantize -> connect -> upload -> time float -> time int8 -> capture -> report.

Each stage's result is kept in :class:`RunState` as soon as it exists, so a failure
later on (a device that drops off, a worker that dies) still leaves a report with
what was already measured, and says which stage failed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qbench.protocols.messages import (
    BenchmarkReply,
    BenchmarkRequest,
    CaptureReply,
    CaptureRequest,
    HelloReply,
    RunnerConfig,
    TimingConfig,
)

from . import data as data_mod
from . import session_tflite, tensor_store
from .compare import matching, names
from .report import prefetch
from .errors import UserError
from .models import InputSpec, ModelInfo, inspect_model, require_float
from .quantize.equalize import equalize_file
from .quantize.kernels import int8_kernels
from .quantize.onnx import quantize_onnx
from .quantize.prepare import prepare_float, resolve_input_shapes
from .transport import stopping
from .transport.base import AgentTransport, TransportError
from .transport.client import AgentClient, AgentError

log = logging.getLogger("qbench")


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
    runner: RunnerConfig = field(default_factory=RunnerConfig)
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
    per_channel: bool = True  # per-channel weight scales; False: one scale per weight tensor
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
    equalization: dict[str, Any] | None = None  # quantize.equalize's report section, with --equalize
    int8_kernels: dict[str, Any] | None = None  # ONNX: quantize.kernels.int8_kernels of the int8 model
    prefetch: prefetch.Prefetch | None = None  # report work started at the capture stage


class UI:
    """What a run tells the user while it goes; the CLI renders it, tests ignore it."""

    def stage(self, name: str) -> None: ...

    def progress(self, stage: str, done: int, total: int) -> None: ...

    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...


def run(settings: RunSettings, transport: AgentTransport, ui: UI | None = None) -> RunState:
    """Run the whole job. Never raises for failures from preparation on: they land in ``state.error``
    (a failed prepare or quantize stage keeps the model files it made in ``out_dir``: ``error["files"]``).

    Raises:
        UserError: a model that is not a float model, or bad evaluation data, found before anything was measured.
    """
    ui = ui or UI()
    require_float(inspect_model(settings.model))  # a refusal, before anything is made or started
    state = RunState(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    stopping.wait_stopped()  # a previous run's agent, still exiting, must not overlap this run's measurements
    # the agent loads no delegate library it was not started with: the run's own (CLI or devices.yaml)
    for runner in (settings.runner, session_tflite.capture_runner(settings)):
        transport.allow_delegate(runner.delegate_path)
    agent = _AgentStart(transport, settings.timeout_s, [session_tflite.runtime_hint(settings.model)])
    try:
        float_path, int8_path = _prepare_models(state, ui)
    except UserError as exc:
        agent.abandon()
        state.error = {"stage": state.stage, "code": "error", "message": str(exc), "files": _kept_files(settings)}
        return state
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    except BaseException:
        agent.abandon()
        raise
    try:
        inputs = _samples(state, ui)
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    except BaseException:
        agent.abandon()
        raise
    try:
        _measure(state, transport, agent, float_path, int8_path, inputs, ui)
    except (AgentError, TransportError, UserError) as exc:
        info = getattr(exc, "info", None)
        state.error = {"stage": state.stage, "code": getattr(info, "code", "error"), "message": str(
            getattr(info, "message", exc))}
        tail = transport.stderr_tail(10)
        if tail:
            state.error["agent_stderr"] = tail
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    return state


#: ``state.error["code"]`` of a run the user interrupted (Ctrl-C); its report's status is ``interrupted``
INTERRUPTED = "interrupted"


def _interrupted(state: RunState, agent: "_AgentStart") -> RunState:
    """Ctrl-C: stop the agent (and its workers) and keep what was measured, as for a failed stage."""
    stage = state.stage
    agent.abandon()  # waits for a start still under way, so that no agent comes up after the run
    state.error = {"stage": stage, "code": INTERRUPTED, "message": f"interrupted during {stage}"}
    return state


def prepare_pair(settings: RunSettings, ui: UI | None = None) -> tuple[RunState, Path, Path]:
    """The float and int8 models a run of ``settings`` would measure, made once (quantized unless ``int8``).

    `compare` gives this pair to every target's run as ``model`` and ``int8``, so that every
    target measures the very same files.

    Returns:
        The preparation's state (notes, equalization), and the float and int8 model paths.

    Raises:
        UserError: bad input.
    """
    state = RunState(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = _prepare_models(state, ui or UI())
    return state, float_path, int8_path


def _prepare_models(state: RunState, ui: UI) -> tuple[Path, Path]:
    s = state.settings
    state.stage = "prepare"
    ui.stage("prepare")
    original = inspect_model(s.model)
    int8 = inspect_model(s.int8) if s.int8 is not None else None
    s.runner.runtime = session_tflite.runtime_for(s, original, int8)
    if s.equalize and (int8 is not None or original.format != "onnx"):
        raise UserError("--equalize rescales an ONNX float model before qbench quantizes it: not with --int8 or TFLite")
    if original.format == "tflite":
        return session_tflite.prepare(state, ui, original, int8, lambda: _calibration(state, ui))
    if int8 is not None:
        # A user's own int8 model names its tensors after the float model as given: compare
        # against that model, not a re-optimized copy whose names may differ.
        state.float_info, state.int8_info = original, int8
        float_path, int8_path = Path(s.model), Path(s.int8)
    else:
        prepared = prepare_float(s.model, s.input_shapes, s.out_dir, debug=s.debug)
        for note in prepared.notes:
            ui.note(note)
        state.notes.extend(prepared.notes)
        float_path = Path(prepared.path)
        if s.equalize:  # the equalized model is the float reference: its inner tensors are rescaled
            state.equalization = equalize_file(float_path, s.out_dir / "float.equalized.onnx")
            float_path = s.out_dir / "float.equalized.onnx"
            state.notes.append(f"cross-layer equalization rescaled {len(state.equalization['pairs'])} conv pair(s)")
        state.float_info = inspect_model(float_path)
        state.stage = "quantize"
        ui.stage("quantize")
        calibration = _calibration(state, ui)
        int8_path = s.out_dir / "model.int8.onnx"
        quantize_onnx(float_path, int8_path, calibration, method=s.calibration_method,
                      activation_type=s.activation_type, per_channel=s.per_channel, debug=s.debug)
        state.int8_info = inspect_model(int8_path)
    _analyze_kernels(state, int8_path)
    state.stage = "match"
    # parsed once: the weight figures read the same two files (matching.load_model caches them)
    state.matching = matching.match(matching.load_model(float_path), matching.load_model(int8_path))
    user_model = s.user_model or (s.model if s.int8 is None else None)
    if user_model is not None and Path(user_model).resolve() != float_path.resolve():
        # tensors of the prepared copy are reported under the user's names
        names.relabel(state.matching, onnx.load(str(user_model)), matching.load_model(float_path))
    if state.matching.control_flow is not None:
        ui.note(state.matching.control_flow.note())
        state.notes.append(state.matching.control_flow.note())
    return float_path, int8_path


def _kept_files(settings: RunSettings) -> list[str]:
    """The model files a failed preparation left in ``out_dir`` (the prepared float model, the int8 model)."""
    return sorted(str(p) for p in Path(settings.out_dir).glob("*") if p.suffix in (".onnx", ".tflite", ".data"))


def _analyze_kernels(state: RunState, int8_path: Path) -> None:
    """Which convolutions and matmuls the host's ONNX Runtime runs as int8 kernels (report's int8_coverage)."""
    try:
        state.int8_kernels = int8_kernels(int8_path)
    except Exception as exc:  # noqa: BLE001 - the figure is a diagnostic: a model ORT refuses fails later, clearly
        log.debug("int8 kernel analysis failed", exc_info=True)
        state.notes.append(f"int8 coverage not analyzed on the host: {str(exc).splitlines()[0] if str(exc) else exc}")


def _static_inputs(state: RunState) -> list[InputSpec]:
    """The float model's inputs with every dim fixed (user's --input-shape, else 1); resolved once."""
    if state.inputs is None:
        info = state.float_info
        shapes, notes = resolve_input_shapes(info.inputs, state.settings.input_shapes, Path(info.path).name)
        state.notes.extend(notes)
        state.inputs = [InputSpec(name=i.name, dtype=i.dtype, shape=tuple(shapes[i.name])) for i in info.inputs]
    return state.inputs


def _calibration(state: RunState, ui: UI) -> dict[str, np.ndarray]:
    s = state.settings
    specs = _static_inputs(state)
    if s.calibration is not None:
        return data_mod.load_samples(s.calibration, specs)
    ui.warn(f"no --calibration given: calibrating on {s.calibration_samples} random samples. "
            "Random calibration misstates real accuracy; pass real data with --calibration FILE.npz")
    state.notes.append("calibrated on random data")
    return data_mod.random_samples(specs, s.calibration_samples, s.seed + 1)


def _samples(state: RunState, ui: UI) -> dict[str, np.ndarray]:
    s = state.settings
    specs = _static_inputs(state)
    if s.data is not None:
        return data_mod.load_samples(s.data, specs)
    ui.note(f"no --data given: comparing on {s.samples} seeded random samples (seed {s.seed})")
    state.notes.append(f"evaluated on {s.samples} random samples (seed {s.seed})")
    return data_mod.random_samples(specs, s.samples, s.seed)


class _AgentStart:
    """Starts the agent and says hello in a thread, so that its start-up overlaps the host's preparation."""

    def __init__(self, transport: AgentTransport, timeout_s: float, runtimes: list[str]):
        self._transport, self._timeout_s, self._runtimes = transport, timeout_s, runtimes
        self._client: AgentClient | None = None
        self._hello: HelloReply | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name="qbench-agent-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self._client = AgentClient(self._transport.start(self._runtimes), timeout_s=self._timeout_s)
            self._hello = self._client.hello(self._runtimes)
        except BaseException as exc:  # handed to the run's thread by result()
            self._error = exc

    def result(self) -> tuple[AgentClient | None, HelloReply | None, BaseException | None]:
        """The connected client and its hello reply, or the error that stopped the start."""
        self._thread.join()
        return self._client, self._hello, self._error

    def abandon(self) -> None:
        """Preparation failed or the run was interrupted: stop the agent (safe after the run stopped it)."""
        client, _, _ = self.result()
        if client is not None:
            client.close()
        self._transport.stop()


def _measure(state: RunState, transport: AgentTransport, agent: _AgentStart, float_path: Path, int8_path: Path,
             inputs: dict[str, np.ndarray], ui: UI) -> None:
    s = state.settings
    state.stage = "connect"
    ui.stage("connect")
    client, hello, error = agent.result()
    try:
        if error is not None:
            raise error
        state.agent = {"hello": hello, "label": transport.label}
        state.stage = "check delegate"
        session_tflite.check_delegate(s.runner, hello.runtimes)
        state.stage = "upload"
        ui.stage("upload")
        # The paths are the inspected models' own files, so their digests are already known.
        float_ref, int8_ref = client.ensure_models([(float_path, state.float_info.format, state.float_info.sha256),
                                                    (int8_path, state.int8_info.format, state.int8_info.sha256)],
                                                   ui.progress)
        state.uploaded_bytes = client.uploaded_bytes
        timed = [("float", float_ref), ("int8", int8_ref)] if s.time_float else [("int8", int8_ref)]
        if s.accuracy_only:
            timed = []
            state.notes.append("--accuracy-only: latency, memory and op profile not measured")
        for kind, ref in timed:
            state.stage = f"timing {kind}"
            ui.stage(state.stage)
            req = BenchmarkRequest(model=ref, runner=s.runner, timing=s.timing, return_outputs=s.return_outputs,
                                   profile_runs=s.profile_runs)
            state.benchmarks[kind], state.outputs[kind] = client.benchmark_outputs(req, inputs, ui.progress)
        state.stage = "capture"
        ui.stage("capture")
        req = CaptureRequest(float_model=float_ref, int8_model=int8_ref, pairs=state.matching.pairs(),
                             runner=session_tflite.capture_runner(s),
                             budget_bytes=int((s.memory_budget_mb or 0) * 1024 * 1024), histogram_bins=s.histogram_bins,
                             save_tensors=s.save_tensors is not None)
        # the host only waits from the agent's first progress on: not during timing, nor while sending
        progress = prefetch.start_on_progress(state, ui.progress)
        state.capture = tensor_store.capture(client, req, inputs, progress, s.save_tensors)
        state.stage = "done"
        _shutdown(client)
    finally:
        if client is not None:
            client.close()
        if state.stage == "done":
            stopping.stop_in_background(transport)  # its exit overlaps the report
        else:
            transport.stop()  # before run() reads the agent's last stderr lines


def _shutdown(client: AgentClient) -> None:
    try:
        client.shutdown()
    except AgentError:
        pass  # the agent is stopped by its transport anyway
