"""Several int8 versions of one float model, each measured on the device: the engine of
``qbench calibrate`` and ``qbench fix``.

The float model is prepared once and calibrated on one set of samples; every int8 candidate is then
measured by a real :func:`qbench.host.session.run` against that same prepared float model, so every
figure comes from the agent. The float model is timed in the first trial only; later trials carry
that float timing (the same file on the same device), and their reports say so in ``notes``.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qbench.protocols.messages import BenchmarkReply, HelloReply

from . import data as data_mod
from .errors import UserError
from .quantize.prepare import Prepared
from .quantize.trial_graph import TrialGraph
from .formats import format_of
from .report.artifacts import write_artifacts
from .report.build import build_report, write_json
from .run_state import UI, RunSettings
from . import session
from .transport.base import AgentTransport, TransportError
from .transport.client import AgentError

REUSED_FLOAT_NOTE = "float latency and memory were measured in the first trial (same float model, same device)"


class TrialUI(UI):
    """Prefixes stages with the trial's label and says each distinct note once across trials."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.label = ""
        self._said: set[str] = set()

    def stage(self, name: str) -> None:
        self.ui.stage(f"{self.label}: {name}" if self.label else name)

    def progress(self, stage: str, done: int, total: int) -> None:
        self.ui.progress(stage, done, total)

    def note(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.ui.note(text)

    def warn(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.ui.warn(text)


class Trials:
    """Prepares a float model once, then quantizes and measures int8 candidates of it.

    Its ``format`` (:class:`~qbench.host.formats.base.ModelFormat`) does what differs between model formats.

    Args:
        base: the run settings every trial shares (``model`` is the user's float model,
            ``out_dir`` the command's output directory).
        transport: makes a fresh, not yet started transport to the device for each trial.
        ui: progress for the user.
        emulated: the device is emulated (copied into each report, as ``run`` does).
        sections: more top-level keys for the published report (``gates``, say).
    """

    def __init__(self, base: RunSettings, transport: Callable[[], AgentTransport], ui: UI | None = None,
                 emulated: bool = False, sections: dict[str, Any] | None = None) -> None:
        self.format = format_of(base.model)
        session.checked_format(base)
        self.int8_name = self.format.int8_name
        self.base = base
        self.transport = transport
        self.ui = TrialUI(ui or UI())
        self.emulated = emulated
        self.sections = dict(sections or {})
        self.prepared: Prepared | None = None
        self.calibration: dict[str, np.ndarray] = {}
        self.calibration_source = ""
        self._float_benchmark: BenchmarkReply | None = None

    def prepare(self) -> Prepared:
        """Prepares the float model into ``out_dir`` and loads (or draws) the calibration samples once."""
        s = self.base
        self.ui.stage("prepare")
        prepared = self.format.prepare_float(s)
        for note in prepared.notes:
            self.ui.note(note)
        # every trial quantizes with that choice
        self.format.device_settings(s, lambda: {s.device: self._device_hello()}, self.ui)
        if s.calibration is not None:
            self.calibration = data_mod.load_samples(s.calibration, prepared.inputs)
            self.calibration_source = str(Path(s.calibration).resolve())
        else:
            self.ui.warn(f"no --calibration given: calibrating on {s.calibration_samples} random samples. "
                         "Random calibration misstates real accuracy; pass real data with --calibration FILE.npz")
            self.calibration = data_mod.random_samples(prepared.inputs, s.calibration_samples, s.seed + 1)
            self.calibration_source = f"random: {s.calibration_samples} samples, seed {s.seed + 1}"
        self.prepared = prepared
        return prepared

    def _device_hello(self) -> HelloReply:
        """The device agent's hello, from an agent started for it alone: every trial starts its own.

        Raises:
            UserError: the agent did not start.
        """
        agent = session.AgentStart(self.transport(), self.base.timeout_s, [self.format.runtime])
        _, hello, error = agent.result()
        agent.abandon()
        if isinstance(error, (AgentError, TransportError)):
            raise UserError(f"could not start the agent: {error}") from error
        if error is not None:
            raise error
        return hello

    def eval_samples(self) -> dict[str, np.ndarray]:
        """The samples every trial's ``run`` evaluates on: ``--data``, else its seeded random samples."""
        s = self.base
        if s.data is not None:
            return data_mod.load_samples(s.data, self.prepared.inputs)
        return data_mod.random_samples(self.prepared.inputs, s.samples, s.seed)

    def settings(self, method: str) -> dict[str, Any]:
        """The JSON settings that reproduce one quantization of the prepared float model: the
        format's (see :meth:`ModelFormat.trial_settings <qbench.host.formats.base.ModelFormat.trial_settings>`)
        after ``float_path`` and ``calibration`` (the samples' file, or how they were drawn)."""
        return {
            "float_path": str(Path(self.prepared.path).resolve()),
            "calibration": self.calibration_source,
            **self.format.trial_settings(method, self.base),
        }

    def quantize(self, out_path: Path, settings: dict[str, Any]) -> Path:
        """Quantizes as :meth:`settings` made ``settings``, with these calibration samples, into ``out_path``."""
        self.ui.stage("quantize")
        return self.format.quantize(settings, Path(out_path), self.calibration, self.base.debug)

    def calibrated(self, out_path: Path, settings: dict[str, Any]) -> TrialGraph:
        """Quantizes as :meth:`quantize` does and keeps the calibration: the graph every trial is written from."""
        self.ui.stage("quantize")
        return self.format.calibrated(settings, Path(out_path), self.calibration, self.base.debug)

    def bias_corrected(self, graph: TrialGraph, out_path: Path) -> TrialGraph | None:
        """``graph`` with corrected biases over these calibration samples (None: the format has no such
        correction, or the base settings corrected every quantization already)."""
        if self.base.bias_correction:
            return None
        return self.format.bias_corrected(graph, Path(out_path), self.calibration)

    def measure(self, label: str, int8_path: Path, out_dir: Path, method: str) -> dict[str, Any]:
        """Runs the prepared float model and ``int8_path`` on the device; writes and returns the report.

        Args:
            label: names the trial in progress lines and errors.
            int8_path: the candidate int8 model.
            out_dir: the trial's directory; its ``report.json`` is written there.
            method: the calibration method the candidate was quantized with (recorded in settings).

        Raises:
            UserError: the run failed on the device (the partial report is still written).
        """
        first = self._float_benchmark is None
        settings = dataclasses.replace(
            self.base, model=self.prepared.path, int8=Path(int8_path), out_dir=Path(out_dir), user_model=self.base.model,
            calibration_method=method, time_float=first, equalize=False, bias_correction=False,
            runner=dataclasses.replace(self.base.runner),
        )
        self.ui.label = label
        try:
            state = session.run(settings, self.transport(), self.ui)
        finally:
            self.ui.label = ""
        if not state.error:
            if first:  # None under --accuracy-only, which times nothing: then every trial is a first
                self._float_benchmark = state.benchmarks.get("float")
            else:
                state.benchmarks = {"float": self._float_benchmark, **state.benchmarks}
                state.notes.append(REUSED_FLOAT_NOTE)
        report = build_report(state)
        report["device"]["emulated"] = self.emulated
        report_path = Path(out_dir) / "report.json"
        write_json(report, report_path)
        if state.error:
            message = (state.error["message"].splitlines() or [""])[0]
            raise UserError(f"{label}: {state.error['stage']} failed: {message} (partial report in {report_path})")
        return report

    def publish(self, report: dict[str, Any], int8_path: Path, key: str, payload: Any) -> tuple[Path, dict[str, Any]]:
        """Makes a trial the command's result: its model as ``out_dir/<int8_name>``, its report as
        ``out_dir/report.json`` (plus report.html and the exports) with ``payload`` under ``key`` and
        the extra ``sections``.

        Returns:
            The report's path and the report.
        """
        out_dir = self.base.out_dir
        final = out_dir / self.int8_name
        if Path(int8_path).resolve() != final.resolve():
            shutil.copyfile(int8_path, final)
        report = copy.deepcopy(report)
        report["models"]["int8"]["path"] = str(final.resolve())
        report["settings"]["int8"] = str(final)
        report.update(self.sections)
        report[key] = payload
        path = out_dir / "report.json"
        write_json(report, path)
        write_artifacts(report, out_dir)
        return path, report


def output_psnr(report: dict[str, Any]) -> float | None:
    """The report's output PSNR, ``inf`` when every float output is exact, None when undefined."""
    summary = report.get("summary") or {}
    value = summary.get("output_psnr_db")
    if value is None and summary.get("outputs_exact"):
        return float("inf")
    return value


def step_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The device figures every trial row shows: output PSNR, int8 latency and memory, speedup."""
    latency, memory = report.get("latency") or {}, report.get("memory") or {}
    return {
        "output_psnr_db": (report.get("summary") or {}).get("output_psnr_db"),
        "outputs_exact": bool((report.get("summary") or {}).get("outputs_exact")),
        "latency_int8_ms": (latency.get("int8") or {}).get("median_ms"),
        "speedup": latency.get("speedup"),
        "peak_mb_int8": (memory.get("int8") or {}).get("peak_mb"),
    }
