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
* trials (``calibrate``, ``fix``): :meth:`ModelFormat.prepare_float`, :meth:`ModelFormat.index`,
  :meth:`ModelFormat.trial_settings`, :meth:`ModelFormat.quantize` and the rest.

Trial settings are the exact arguments of one quantization; every format's also carry
``float_path`` and ``calibration`` (added by :class:`~qbench.host.trials.Trials`), so that they
reproduce the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from qbench.protocols.messages import HelloReply, RunnerConfig

from ..errors import UserError

if TYPE_CHECKING:
    from ..compare.weights import WeightTable
    from ..inventory import Device
    from ..models import ModelInfo
    from ..quantize.prepare import Prepared
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


@dataclass
class GraphIndex:
    """The float graph as a fallback search sees it.

    Attributes:
        ops: every op's id: the node name (ONNX), or the name of the op's first output tensor
            (TFLite: ai-edge-quantizer addresses ops by their output names).
        producer: activation tensor -> the op that writes it.
        readers: activation tensor -> the ops that read it.
        inputs: op -> the activation tensors it reads (constants left out).
    """

    ops: set[str] = field(default_factory=set)
    producer: dict[str, str] = field(default_factory=dict)
    readers: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def add(self, op: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.ops.add(op)
        self.inputs[op] = list(inputs)
        for name in outputs:
            self.producer[name] = op
        for name in inputs:
            self.readers.setdefault(name, []).append(op)


class ModelFormat(Protocol):
    """One model format: its runtime, its options, its quantizer, its capture.

    Attributes:
        name: "onnx" or "tflite" (``ModelInfo.format``).
        runtime: the agent runtime that runs it.
        int8_name: the file name of a model qbench quantizes.
        methods: the calibration methods, default order.
        note: what the calibration table must say about the methods, or None.
    """

    name: str
    runtime: str
    int8_name: str
    methods: tuple[str, ...]
    note: str | None

    def runner(self, device: Device, choice: RuntimeChoice) -> RunnerConfig:
        """The runtime's config on ``device``: ``choice`` over the device's settings.

        Raises:
            UserError: an option of another format, or a malformed one.
        """

    def check(self, settings: RunSettings) -> None:
        """Refuses every setting that does not apply to this format (one line, before anything runs)."""

    def prepare(self, state: RunState, ui: UI, int8: ModelInfo | None,
                calibration: Callable[[], dict[str, np.ndarray]],
                hello: Callable[[], HelloReply | None]) -> tuple[Path, Path]:
        """Prepares the float model, quantizes it unless ``int8`` is given (after :meth:`device_settings`),
        and matches the pair's tensors into ``state.matching``; fills ``state.float_info``, ``int8_info``
        and ``notes``.

        Returns:
            The float and int8 model paths to upload.
        """

    def device_settings(self, settings: RunSettings, hello: Callable[[], HelloReply | None], ui: UI) -> None:
        """Fills in the quantization settings the device decides (ONNX: ``reduce_range`` auto) and says
        them in one line, before quantizing. ``hello`` waits for the device agent's hello (None: no single
        device is known); it is called only when a setting needs it."""

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

    def index(self, float_path: Path) -> GraphIndex:
        """The float graph's ops and activation tensors."""

    def trial_settings(self, method: str, base: RunSettings, float_ops: Sequence[str],
                       int16: Sequence[str]) -> dict[str, Any]:
        """The JSON arguments of one quantization: ``float_ops`` (op ids) left in float, ``int16``
        (whatever :meth:`int16_targets` names) with int16 activations."""

    def quantize(self, settings: Mapping[str, Any], out_path: Path, calibration: Mapping[str, np.ndarray],
                 debug: bool) -> Path:
        """Quantizes ``settings["float_path"]`` as ``settings`` say into ``out_path``."""

    def quantized(self, report: dict[str, Any], int8_path: Path) -> set[str]:
        """The activation tensors an int8 model (with its report) holds in an integer type."""

    def int16_targets(self, tensors: set[str], index: GraphIndex) -> set[str]:
        """What :meth:`trial_settings` takes as ``int16`` to hold these activation tensors in int16."""

    def describe(self, method: str) -> dict[str, Any]:
        """More fields of a method's row in the calibration table."""


def given_choices(choice: RuntimeChoice, fields: Sequence[str]) -> list[str]:
    """The options of ``choice`` among ``fields`` the user set."""
    return [CHOICE_OPTIONS[name] for name in fields if getattr(choice, name)]
