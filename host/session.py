"""One run: prepare -> quantize -> connect -> upload -> time float -> time int8 -> capture -> report.

Each stage's result is kept in :class:`RunState` as soon as it exists, so a failure
later on (a device that drops off, a worker that dies) still leaves a report with
what was already measured, and says which stage failed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from qbench.protocols.messages import BenchmarkRequest, CaptureRequest, HelloReply

from . import data as data_mod
from . import tensor_store
from .errors import UserError
from .formats import ModelFormat, RuntimeChoice, format_of
from .inventory import Device
from .models import InputSpec, inspect_model, require_float
from .quantize.prepare import resolve_input_shapes
from .report import prefetch
from .run_state import INTERRUPTED, UI, RunSettings, RunState
from .transport import stopping
from .transport.base import AgentTransport, TransportError
from .transport.client import AgentClient, AgentError

log = logging.getLogger("qbench")


def run(settings: RunSettings, transport: AgentTransport, ui: UI | None = None) -> RunState:
    """Run the whole job. Never raises for failures from preparation on: they land in ``state.error``
    (a failed prepare or quantize stage keeps the model files it made in ``out_dir``: ``error["files"]``).

    Raises:
        UserError: a model that is not a float model, or bad evaluation data, found before anything was measured.
    """
    ui = ui or UI()
    fmt = checked_format(settings)  # refusals, before anything is made or started
    state = RunState(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    stopping.wait_stopped()  # a previous run's agent, still exiting, must not overlap this run's measurements
    # the agent loads no delegate library it was not started with: the run's own (CLI or devices.yaml)
    for library in fmt.delegate_libraries(settings):
        transport.allow_delegate(library)
    agent = AgentStart(transport, settings.timeout_s, [fmt.runtime])
    try:
        # quantizing waits for the device's hello when it needs it (--reduce-range auto), so the agent's
        # start-up still overlaps the float model's preparation; an agent that did not start gives None
        # (the int8 model is still made and kept, and the connect stage fails with the agent's error)
        float_path, int8_path = _prepare_models(state, fmt, ui, lambda: {settings.device: agent.result()[1]})
    except UserError as exc:
        agent.abandon()
        state.error = {"stage": state.stage, "code": "error", "message": str(exc), "files": _kept_files(settings)}
        state.cause = exc
        return state
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    except BaseException:
        agent.abandon()
        raise
    try:
        inputs = state.samples = _samples(state, ui)
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    except BaseException:
        agent.abandon()
        raise
    try:
        _measure(state, fmt, transport, agent, float_path, int8_path, inputs, ui)
    except (AgentError, TransportError, UserError) as exc:
        info = getattr(exc, "info", None)
        state.error = {"stage": state.stage, "code": getattr(info, "code", "error"), "message": str(
            getattr(info, "message", exc))}
        state.cause = exc
        tail = transport.stderr_tail(10)
        if tail:
            state.error["agent_stderr"] = tail
    except KeyboardInterrupt:
        return _interrupted(state, agent)
    return state


def _interrupted(state: RunState, agent: "AgentStart") -> RunState:
    """Ctrl-C: stop the agent (and its workers) and keep what was measured, as for a failed stage."""
    stage = state.stage
    agent.abandon()  # waits for a start still under way, so that no agent comes up after the run
    state.error = {"stage": stage, "code": INTERRUPTED, "message": f"interrupted during {stage}"}
    return state


def checked_format(settings: RunSettings) -> ModelFormat:
    """The format of the run's models, once every setting has been checked against it.

    Raises:
        UserError: not a float model, an int8 model of another format, or a setting that does not apply.
    """
    fmt = format_of(settings.model)
    require_float(inspect_model(settings.model))
    if settings.int8 is not None and format_of(settings.int8) is not fmt:
        raise UserError(f"{Path(settings.model).name} is a {fmt.name} model but --int8 {Path(settings.int8).name} "
                        f"is a {format_of(settings.int8).name} model: give both models in the same format")
    if settings.equalize and settings.int8 is not None:
        raise UserError("--equalize rescales the float model before qbench quantizes it: not with --int8")
    if settings.bias_correction and settings.int8 is not None:
        raise UserError("--bias-correction corrects the int8 model qbench makes: not with --int8")
    if settings.runner is None:
        settings.runner = fmt.runner(Device(name=settings.device), RuntimeChoice())
    fmt.check(settings)
    return fmt


def prepare_pair(settings: RunSettings, ui: UI | None = None,
                 hellos: Callable[[], Mapping[str, HelloReply | None]] = dict) -> tuple[RunState, Path, Path]:
    """The float and int8 models a run of ``settings`` would measure, made once (quantized unless ``int8``).

    `compare` gives this pair to every target's run as ``model`` and ``int8``, so that every
    target measures the very same files; ``hellos`` gives its targets' hellos by device
    (:func:`qbench.host.targets.device_hellos`), asked for only when the quantization depends on them.

    Returns:
        The preparation's state (notes, equalization), and the float and int8 model paths.

    Raises:
        UserError: bad input.
    """
    fmt = checked_format(settings)
    state = RunState(settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    float_path, int8_path = _prepare_models(state, fmt, ui or UI(), hellos)
    return state, float_path, int8_path


def _prepare_models(state: RunState, fmt: ModelFormat, ui: UI,
                    hellos: Callable[[], Mapping[str, HelloReply | None]]) -> tuple[Path, Path]:
    s = state.settings
    state.stage = "prepare"
    ui.stage("prepare")
    int8 = inspect_model(s.int8) if s.int8 is not None else None
    return fmt.prepare(state, ui, int8, lambda: _calibration(state, ui), hellos)


def _kept_files(settings: RunSettings) -> list[str]:
    """The model files a failed preparation left in ``out_dir`` (the prepared float model, the int8 model)."""
    return sorted(str(p) for p in Path(settings.out_dir).glob("*") if p.suffix in (".onnx", ".tflite", ".data"))


def _static_inputs(state: RunState) -> list[InputSpec]:
    """The float model's inputs with every dim fixed (user's --input-shape, else the data's, else 1); resolved once.

    The prepared model's inputs are dynamic still where it did not load with static shapes (an If whose
    branches' shapes ORT cannot infer: silero VAD v5): their dims come from the data, as in preparation."""
    if state.inputs is None:
        info, s = state.float_info, state.settings
        shapes, notes = resolve_input_shapes(info.inputs, s.input_shapes, Path(info.path).name,
                                             data_mod.sample_shapes(s.data, s.calibration))
        state.notes.extend(n for n in notes if n not in state.notes)
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


class AgentStart:
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


def _measure(state: RunState, fmt: ModelFormat, transport: AgentTransport, agent: AgentStart, float_path: Path,
             int8_path: Path, inputs: dict[str, np.ndarray], ui: UI) -> None:
    s = state.settings
    state.stage = "connect"
    ui.stage("connect")
    client, hello, error = agent.result()
    try:
        if error is not None:
            raise error
        state.agent = {"hello": hello, "label": transport.label}
        state.stage = "check delegate"
        fmt.check_device(s.runner, hello.runtimes)
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
                             runner=fmt.capture_runner(s),
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
