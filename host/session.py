"""One run: prepare -> quantize -> connect -> upload -> time float -> time int8 -> capture -> report.

Each stage's result is kept in :class:`RunState` as soon as it exists, so a failure
later on (a device that drops off, a worker that dies) still leaves a report with
what was already measured, and says which stage failed.
"""

from __future__ import annotations

import logging
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
    RunnerConfig,
    TimingConfig,
)

from . import data as data_mod
from .compare import matching
from .errors import UserError
from .models import InputSpec, ModelInfo, inspect_model
from .quantize.onnx import quantize_onnx
from .quantize.prepare import prepare_float, resolve_input_shapes
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
    memory_budget_mb: float = 256.0
    drop_db: float = 6.0
    worst: int = 5
    timeout_s: float = 60.0
    debug: bool = False


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
    capture: CaptureReply | None = None
    error: dict[str, str] | None = None


class UI:
    """What a run tells the user while it goes; the CLI renders it, tests ignore it."""

    def stage(self, name: str) -> None: ...

    def progress(self, stage: str, done: int, total: int) -> None: ...

    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...


def run(settings: RunSettings, transport: AgentTransport, ui: UI | None = None) -> RunState:
    """Run the whole job. Never raises for failures after preparation: they land in ``state.error``.

    Raises:
        UserError: bad input found before anything was measured.
    """
    ui = ui or UI()
    state = RunState(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = _prepare_models(state, ui)
    inputs = _samples(state, ui)
    try:
        _measure(state, transport, float_path, int8_path, inputs, ui)
    except (AgentError, TransportError, UserError) as exc:
        info = getattr(exc, "info", None)
        state.error = {"stage": state.stage, "code": getattr(info, "code", "error"), "message": str(
            getattr(info, "message", exc))}
        tail = transport.stderr_tail(10)
        if tail:
            state.error["agent_stderr"] = tail
    return state


def _prepare_models(state: RunState, ui: UI) -> tuple[Path, Path]:
    s = state.settings
    state.stage = "prepare"
    ui.stage("prepare")
    original = inspect_model(s.model)
    if original.format != "onnx":
        raise UserError(f"{s.model}: {original.format} models are not supported by `run` yet")
    if s.int8 is not None:
        # A user's own int8 model names its tensors after the float model as given: compare
        # against that model, not a re-optimized copy whose names may differ.
        int8 = inspect_model(s.int8)
        state.float_info, state.int8_info = original, int8
        float_path, int8_path = Path(s.model), Path(s.int8)
    else:
        prepared = prepare_float(s.model, s.input_shapes, s.out_dir, debug=s.debug)
        for note in prepared.notes:
            ui.note(note)
        state.notes.extend(prepared.notes)
        float_path = Path(prepared.path)
        state.float_info = inspect_model(float_path)
        state.stage = "quantize"
        ui.stage("quantize")
        calibration = _calibration(state, ui)
        int8_path = s.out_dir / "model.int8.onnx"
        quantize_onnx(float_path, int8_path, calibration, method=s.calibration_method,
                      activation_type=s.activation_type, debug=s.debug)
        state.int8_info = inspect_model(int8_path)
    state.stage = "match"
    state.matching = matching.match(onnx.load(str(float_path)), onnx.load(str(int8_path)))
    return float_path, int8_path


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


def _measure(state: RunState, transport: AgentTransport, float_path: Path, int8_path: Path,
             inputs: dict[str, np.ndarray], ui: UI) -> None:
    s = state.settings
    state.stage = "connect"
    ui.stage("connect")
    client = AgentClient(transport.start(), timeout_s=s.timeout_s)
    try:
        hello = client.hello()
        state.agent = {"hello": hello, "label": transport.label}
        state.stage = "upload"
        ui.stage("upload")
        float_ref = client.ensure_model(float_path, "onnx", ui.progress)
        int8_ref = client.ensure_model(int8_path, "onnx", ui.progress)
        state.uploaded_bytes = client.uploaded_bytes
        for kind, ref in (("float", float_ref), ("int8", int8_ref)):
            state.stage = f"timing {kind}"
            ui.stage(state.stage)
            req = BenchmarkRequest(model=ref, runner=s.runner, timing=s.timing)
            state.benchmarks[kind] = client.benchmark(req, inputs, ui.progress)
        state.stage = "capture"
        ui.stage("capture")
        req = CaptureRequest(float_model=float_ref, int8_model=int8_ref, pairs=state.matching.pairs(),
                             runner=s.runner, budget_bytes=int(s.memory_budget_mb * 1024 * 1024))
        state.capture = client.capture(req, inputs, ui.progress)
        state.stage = "done"
        _shutdown(client)
    finally:
        client.close()
        transport.stop()


def _shutdown(client: AgentClient) -> None:
    try:
        client.shutdown()
    except AgentError:
        pass  # the agent is stopped by its transport anyway
