"""What a command needs of a model format, behind one interface: :class:`ModelFormat`.

``run``, ``compare``, ``calibrate`` and ``fix`` never ask which format a model is in; the format
object (:func:`qbench.host.formats.format_of`, from the file's bytes) does what differs:

* options: :meth:`ModelFormat.runner` builds the runtime's own config (protocol 2.0: one per
  runtime) from the device and the user's :class:`RuntimeChoice`, and :meth:`ModelFormat.check`
  refuses every setting that does not apply to the format, once for all four commands;
* the run: :meth:`ModelFormat.prepare` prepares and quantizes the pair and matches its tensors, with
  the settings the device decides (:meth:`ModelFormat.device_settings`, from the agent's hello);
  :meth:`ModelFormat.capture_runner` and :meth:`ModelFormat.check_device` say how the capture runs
  and whether the device can run what was asked;
* trials (``calibrate``, ``fix``, ``sensitivity``): :meth:`ModelFormat.prepare_float`,
  :meth:`ModelFormat.trial_settings`, :meth:`ModelFormat.quantize`, :meth:`ModelFormat.output_structures`
  (the verdicts' figures of each trial), and :meth:`ModelFormat.calibrated`, whose
  :class:`~qbench.host.quantize.trial_graph.TrialGraph` writes each trial of ``fix`` and
  ``sensitivity`` from one calibration.

Trial settings are the exact arguments of one quantization; every format's also carry
``float_path`` and ``calibration`` (added by :class:`~qbench.host.trials.Trials`), so that they
reproduce the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from qbench.protocols.messages import HelloReply, RunnerConfig, StructureRequest

from ..errors import UserError

if TYPE_CHECKING:
    from ..compare.weights import WeightTable
    from ..inventory import Device
    from ..models import ModelInfo
    from ..quantize.prepare import Prepared
    from ..quantize.trial_graph import TrialGraph
    from ..run_state import UI, RunSettings, RunState


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime options a user asked for (command line or Python API); unset ones are the device's.

    Attributes:
        providers: ONNX Runtime: an ordered provider chain (``--provider``).
        delegate: LiteRT: ``--delegate``.
        delegate_path: LiteRT: ``--delegate-path``.
        delegate_options: LiteRT: ``--delegate-option`` entries, ``key=value``.
        accelerator: LiteRT: ``--accelerator``.
        threads: ``--threads``.
    """

    providers: tuple[str, ...] = ()
    delegate: str | None = None
    delegate_path: str | None = None
    delegate_options: tuple[str, ...] = ()
    accelerator: str | None = None
    threads: int | None = None


#: RuntimeChoice field -> the option that sets it, for refusals
CHOICE_OPTIONS = {"providers": "--provider", "delegate": "--delegate", "delegate_path": "--delegate-path",
                  "delegate_options": "--delegate-option", "accelerator": "--accelerator"}


def refuse(given: Sequence[str], format_name: str, instead: str) -> None:
    """One line for the options of another format that were given.

    Raises:
        UserError: when ``given`` is not empty.
    """
    if given:
        raise UserError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {format_name} models"
                        f"{'; ' + instead if instead else ''}")


class ModelFormat(Protocol):
    """One model format: its runtime, its options, its quantizer, its capture.

    Attributes:
        name: "onnx" or "tflite" (``ModelInfo.format``).
        runtime: the agent runtime that runs it.
        int8_name: the file name of a model qbench quantizes.
        methods: the calibration methods, default order.
        note: what the calibration table must say about the methods, or None.
        fix_methods: the calibration methods ``fix`` tries per model by default.
    """

    name: str
    runtime: str
    int8_name: str
    methods: tuple[str, ...]
    note: str | None
    fix_methods: tuple[str, ...]

    def runner(self, device: Device, choice: RuntimeChoice) -> RunnerConfig:
        """The runtime's config on ``device``: ``choice`` over the device's settings.

        Raises:
            UserError: an option of another format, or a malformed one.
        """

    def check(self, settings: RunSettings) -> None:
        """Refuses every setting that does not apply to this format (one line, before anything runs)."""

    def prepare(self, state: RunState, ui: UI, int8: ModelInfo | None,
                calibration: Callable[[], dict[str, np.ndarray]],
                hellos: Callable[[], Mapping[str, HelloReply | None]]) -> tuple[Path, Path]:
        """Prepares the float model, quantizes it unless ``int8`` is given (after :meth:`device_settings`),
        and matches the pair's tensors into ``state.matching``; fills ``state.float_info``, ``int8_info``
        and ``notes``.

        Returns:
            The float and int8 model paths to upload.
        """

    def device_settings(self, settings: RunSettings, hellos: Callable[[], Mapping[str, HelloReply | None]],
                        ui: UI) -> None:
        """Fills in the quantization settings the devices decide (ONNX: ``reduce_range`` auto) and says
        them in one line, before quantizing. ``hellos`` waits for the hello of each device the int8 model
        is made for, by name (None for an agent that did not start; several for ``compare``); it is
        called only when a setting needs it."""

    def weight_table(self, float_path: Path, int8_path: Path) -> WeightTable:
        """The figures of every integer weight of ``int8_path`` against ``float_path``."""

    def capture_runner(self, settings: RunSettings) -> RunnerConfig:
        """The runner config of the per-layer capture."""

    def delegate_libraries(self, settings: RunSettings) -> list[str]:
        """The libraries the agent must be allowed to load for this run's runners."""

    def check_device(self, runner: RunnerConfig, runtimes: dict[str, Any]) -> None:
        """Fails before any measurement when what ``runner`` asks for is not on the device
        (``runtimes``: the agent's hello, name -> RuntimeInfo)."""

    def prepare_float(self, settings: RunSettings) -> Prepared:
        """The float model that trials quantize and measure, with static input shapes."""

    def trial_settings(self, method: str, base: RunSettings) -> dict[str, Any]:
        """The JSON arguments of one quantization of the whole model with ``method``."""

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        """Quantizes ``settings["float_path"]`` as ``settings`` say into ``out_path``."""

    def calibrated(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                   debug: bool) -> TrialGraph:
        """Quantizes as :meth:`quantize` does, and keeps what that calibration found: the returned graph
        writes every trial model of a fix search or sensitivity sweep without calibrating again."""

    def run_trial_graph(self, state: RunState) -> TrialGraph | None:
        """The trial graph of the int8 model a finished run made itself (no second calibration), for
        measurements after the run; None when there is none (a user's own int8 model)."""

    def bias_corrected(self, graph: TrialGraph, out_path: Path,
                       calibration: Mapping[str, np.ndarray]) -> TrialGraph | None:
        """A copy of ``graph`` at ``out_path`` whose biases are corrected for its weights' mean output shift
        (:mod:`~qbench.host.quantize.bias_correction`), its ranges unchanged; None when the format's
        quantizer has no such correction."""

    def output_structures(self, float_path: Path) -> dict[str, StructureRequest]:
        """What the agent measures of each float output's structure, by output name (the verdicts' figures)."""

    def describe(self, method: str) -> dict[str, Any]:
        """More fields of a method's row in the calibration table."""


def given_choices(choice: RuntimeChoice, fields: Sequence[str]) -> list[str]:
    """The options of ``choice`` among ``fields`` the user set."""
    return [CHOICE_OPTIONS[name] for name in fields if getattr(choice, name)]


def note_control_flow(state: RunState, ui: UI) -> None:
    """Tells the user, and the report's notes, what share of the model sits in control-flow bodies
    (not compared one by one), once the models are matched."""
    if state.matching.control_flow is not None:
        ui.note(state.matching.control_flow.note())
        state.notes.append(state.matching.control_flow.note())
