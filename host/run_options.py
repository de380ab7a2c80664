"""The options every measuring command takes (run, compare, calibrate, fix, sensitivity), declared once.

:class:`RunOptions` is both what the CLI adds to each command (its fields carry their typer
declarations: flags, help, panels, ranges) and what the Python API (:mod:`qbench.host.api`) takes as
keyword arguments; :meth:`RunOptions.settings` turns them into a run's settings, checked against the
model's format before any folder is made.
"""


from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from qbench.protocols.messages import RunnerConfig, TimingConfig

from .errors import UserError
from .gates import Gates
from .formats import RuntimeChoice, format_of
from .inventory import Device, Inventory
from .quantize.prepare import parse_input_shapes
from .run_state import RunSettings
from .session import checked_format
from .quantize.tflite import METHODS as TFLITE_METHODS
from .paths import check_output_dir

METHODS = ("minmax", "entropy", "percentile", "distribution")
#: every format's methods; each format checks its own when it quantizes
ALL_METHODS = (*METHODS, *(m for m in TFLITE_METHODS if m not in METHODS))
ACTIVATION_TYPES = ("int8", "uint8", "int16")

#: the panels of a measuring command's --help (typer's rich_help_panel), so its ~40 options read by topic
INPUTS, QUANTIZATION, TIMING = "Inputs", "Quantization", "Timing"
CAPTURE, OUTPUT, GATES = "Capture (per-layer analysis)", "Output", "Gates (exit 3 when one fails)"
DEVICE = "Device and runtime"


@dataclass
class RunOptions:
    """The options every measuring command takes, as typed by the user."""

    devices: Annotated[Optional[Path], typer.Option(
        "--devices", rich_help_panel=DEVICE, envvar="QBENCH_DEVICES", help="inventory file")] = None
    int8: Annotated[Optional[Path], typer.Option(
        "--int8", rich_help_panel=INPUTS, help="your int8 model; otherwise qbench quantizes MODEL")] = None
    input_shape: Annotated[list[str], typer.Option(
        "--input-shape", rich_help_panel=INPUTS,
        help="name:d0,d1,... fixes dynamic dims (repeat)")] = field(default_factory=list)
    data: Annotated[Optional[Path], typer.Option(
        "--data", rich_help_panel=INPUTS, help="evaluation samples: .npz, one (N, *shape) array per input")] = None
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", rich_help_panel=INPUTS, help="calibration samples (.npz, as --data)")] = None
    samples: Annotated[int, typer.Option(
        "--samples", rich_help_panel=INPUTS, min=1, help="random evaluation samples when --data is not given")] = 4
    calibration_method: Annotated[str, typer.Option(
        "--calibration-method", rich_help_panel=QUANTIZATION,
        help=f"ONNX: {'|'.join(METHODS)}; TFLite: {'|'.join(TFLITE_METHODS)}")] = "minmax"
    activation_type: Annotated[str, typer.Option(
        "--activation-type", rich_help_panel=QUANTIZATION, help="int8 | uint8 (ONNX) | int16 (TFLite)")] = "int8"
    equalize: Annotated[bool, typer.Option(
        "--equalize", rich_help_panel=QUANTIZATION,
        help="cross-layer weight equalization before quantizing (ONNX)")] = False
    bias_correction: Annotated[bool, typer.Option(
        "--bias-correction", rich_help_panel=QUANTIZATION,
        help="ONNX: correct each conv/Gemm bias by the mean output shift its int8 weights cause on the calibration data")] = False
    per_tensor: Annotated[bool, typer.Option(
        "--per-tensor", rich_help_panel=QUANTIZATION,
        help="ONNX: one scale per weight tensor, not per channel")] = False
    reduce_range: Annotated[Optional[bool], typer.Option(
        "--reduce-range/--no-reduce-range", rich_help_panel=QUANTIZATION, show_default=False,
        help="ONNX: 7-bit weights, which x86 CPUs without VNNI multiply without int16 saturation; "
             "default: auto, on for exactly such a device")] = None
    runs: Annotated[int, typer.Option("--runs", rich_help_panel=TIMING, min=1, help="timed runs, at least")] = 20
    warmup: Annotated[int, typer.Option(
        "--warmup", rich_help_panel=TIMING, min=0, help="untimed runs before timing")] = 5
    min_seconds: Annotated[float, typer.Option(
        "--min-seconds", rich_help_panel=TIMING, min=0.0, help="time each model at least this long")] = 0.5
    accuracy_only: Annotated[bool, typer.Option(
        "--accuracy-only", rich_help_panel=TIMING,
        help="per-layer analysis only: no latency, memory or op profile runs")] = False
    profile_runs: Annotated[int, typer.Option(
        "--profile-runs", rich_help_panel=TIMING, min=0,
        help="per-op kernel times over N runs of a separate profiling session; 0: off")] = 10
    threads: Annotated[Optional[int], typer.Option(
        "--threads", rich_help_panel=DEVICE, min=1, help="runtime threads (default: device's)")] = None
    delegate_path: Annotated[Optional[str], typer.Option(
        "--delegate-path", rich_help_panel=DEVICE, help="TFLite: external delegate library")] = None
    delegate_option: Annotated[list[str], typer.Option(
        "--delegate-option", rich_help_panel=DEVICE,
        help="TFLite: key=value for it (repeat)")] = field(default_factory=list)
    capture_delegate: Annotated[Optional[str], typer.Option(
        "--capture-delegate", rich_help_panel=CAPTURE,
        help="TFLite: delegate of the per-layer capture (none: builtin kernels); timing keeps --delegate")] = None
    accelerator: Annotated[Optional[str], typer.Option(
        "--accelerator", rich_help_panel=DEVICE,
        help="TFLite: time on LiteRT's CompiledModel with cpu | gpu | npu (default: device's); "
             "capture stays on the Interpreter")] = None
    memory_budget: Annotated[str, typer.Option(
        "--memory-budget", rich_help_panel=CAPTURE,
        help="MB of tensors per capture pass; auto: a quarter of the device's available memory, "
             "16 MB to 1 GB")] = "auto"
    histogram_bins: Annotated[int, typer.Option(
        "--histogram-bins", rich_help_panel=CAPTURE, min=0, max=1024,
        help="value histogram bins per layer (0: none)")] = 64
    save_tensors: Annotated[Optional[Path], typer.Option(
        "--save-tensors", rich_help_panel=CAPTURE,
        help="stream every captured tensor into DIR (<layer>.float/.int8.npy + index.json)")] = None
    drop_db: Annotated[float, typer.Option(
        "--drop-db", rich_help_panel=CAPTURE,
        help="flag layers whose SQNR falls more than this (dB) below their inputs'")] = 6.0
    worst: Annotated[int, typer.Option(
        "--worst", rich_help_panel=OUTPUT, min=0, help="how many worst layers to print")] = 5
    out: Annotated[Optional[Path], typer.Option(
        "--out", rich_help_panel=OUTPUT, help="output directory (default: a new one in ./qbench-out)")] = None
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=INPUTS)] = 0
    timeout: Annotated[float, typer.Option(
        "--timeout", rich_help_panel=DEVICE, min=1.0, help="seconds of agent silence before giving up")] = 60.0
    accept_new_host: Annotated[bool, typer.Option(
        "--accept-new-host", rich_help_panel=DEVICE, help="trust an SSH host key not yet known")] = False
    wait_timeout: Annotated[float, typer.Option(
        "--wait-timeout", rich_help_panel=DEVICE, min=0.0,
        help="labgrid places: seconds to wait for a locked or busy board")] = 600.0
    priority: Annotated[float, typer.Option(
        "--priority", rich_help_panel=DEVICE,
        help="labgrid places: reservation priority of `--device tag:...` (higher goes first)")] = 0.0
    fail_under_psnr: Annotated[Optional[float], typer.Option(
        "--fail-under-psnr", rich_help_panel=GATES, help="gate: output PSNR below DB")] = None
    fail_under_speedup: Annotated[Optional[float], typer.Option(
        "--fail-under-speedup", rich_help_panel=GATES, help="gate: speedup below X")] = None
    fail_over_memory: Annotated[Optional[float], typer.Option(
        "--fail-over-memory", rich_help_panel=GATES, help="gate: int8 peak memory over MB")] = None
    fail_on_drop: Annotated[bool, typer.Option(
        "--fail-on-drop", rich_help_panel=GATES,
        help="gate: any sudden drop (SQNR)")] = False
    fail_on_broken: Annotated[bool, typer.Option(
        "--fail-on-broken", rich_help_panel=GATES,
        help="gate: any output verdict broken")] = False
    fail_under_top1: Annotated[Optional[float], typer.Option(
        "--fail-under-top1", rich_help_panel=GATES, min=0.0, max=1.0,
        help="gate: top-1 (CTC: sequence) agreement of argmax outputs below X (0..1)")] = None
    db: Annotated[Optional[Path], typer.Option(
        "--db", rich_help_panel=OUTPUT, help="results database (default: in the user data dir)")] = None
    as_json: Annotated[bool, typer.Option(
        "--json", rich_help_panel=OUTPUT,
        help="print the result as JSON on stdout")] = False
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", rich_help_panel=OUTPUT,
        help="no progress bars or notes")] = False

    def lab(self, inventory: Inventory):
        """How this run waits for labgrid places and checks their health."""
        from .lab.options import LabOptions

        return LabOptions(wait_timeout_s=self.wait_timeout, priority=self.priority,
                          quarantine_after=inventory.lab.quarantine_after, health_check=inventory.lab.health_check)

    def validate(self) -> None:
        """Raises UserError for values typer cannot check by itself."""
        if self.calibration_method not in ALL_METHODS:
            raise UserError(f"--calibration-method must be one of {', '.join(ALL_METHODS)}, "
                            f"not {self.calibration_method!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise UserError(f"--activation-type must be {', '.join(ACTIVATION_TYPES[:-1])} or {ACTIVATION_TYPES[-1]}, "
                            f"not {self.activation_type!r}")
        if self.accuracy_only and (self.fail_under_speedup is not None or self.fail_over_memory is not None):
            raise UserError("--fail-under-speedup and --fail-over-memory need timing: not with --accuracy-only")
        self.memory_budget_mb()

    def memory_budget_mb(self) -> float | None:
        """``--memory-budget`` in MB; None for auto (the agent sizes it from its available memory)."""
        if self.memory_budget.strip().lower() == "auto":
            return None
        try:
            budget = float(self.memory_budget)
        except ValueError:
            budget = 0.0
        if not budget >= 1.0:  # also NaN
            raise UserError(f"--memory-budget is a number of MB (at least 1) or auto, not {self.memory_budget!r}")
        return budget

    def gates(self) -> Gates:
        return Gates(self.fail_under_psnr, self.fail_under_speedup, self.fail_over_memory, self.fail_on_drop,
                     self.fail_on_broken, self.fail_under_top1)

    def settings(self, model: Path, device: str, runner: RunnerConfig, debug: bool, suffix: str = "") -> RunSettings:
        """The settings of one run of ``model`` on ``device`` with ``runner``, checked against the model's
        format before ``--out`` (or its default, a new folder named after the model and ``suffix``) and
        ``--save-tensors`` are made.

        Raises:
            UserError: a setting that does not apply to the model, or an output folder qbench cannot write in.
        """
        out_dir = self.out or default_out_dir(model, suffix)
        settings = RunSettings(
            model=model, out_dir=out_dir, int8=self.int8, device=device,
            input_shapes=parse_input_shapes(self.input_shape), data=self.data, calibration=self.calibration,
            samples=self.samples, calibration_method=self.calibration_method, activation_type=self.activation_type,
            seed=self.seed, runner=runner,
            timing=TimingConfig(warmup=self.warmup, runs=self.runs, min_seconds=self.min_seconds),
            profile_runs=self.profile_runs, accuracy_only=self.accuracy_only, capture_delegate=self.capture_delegate, equalize=self.equalize,
            bias_correction=self.bias_correction,
            per_channel=not self.per_tensor, reduce_range=self.reduce_range, memory_budget_mb=self.memory_budget_mb(), drop_db=self.drop_db,
            histogram_bins=self.histogram_bins, save_tensors=self.save_tensors,
            worst=self.worst, timeout_s=self.timeout, debug=debug,
        )
        checked_format(settings)
        check_output_dir(out_dir, "--out")
        if self.save_tensors is not None:
            check_output_dir(self.save_tensors, "--save-tensors")
        return settings


def runner_for(model: Path, device: Device, opts: RunOptions, providers: Sequence[str] = (),
               delegate: Optional[str] = None) -> RunnerConfig:
    """How the worker builds its session for ``model`` on ``device``: the command line's choices over the
    device's, in the config of the model's runtime.

    Args:
        providers: ONNX: ``--provider``, an ordered chain.
        delegate: TFLite: ``--delegate``.

    Raises:
        UserError: an option of the other format, or a malformed one.
    """
    choice = RuntimeChoice(providers=tuple(providers), delegate=delegate, delegate_path=opts.delegate_path,
                           delegate_options=tuple(opts.delegate_option), accelerator=opts.accelerator,
                           threads=opts.threads)
    return format_of(model).runner(device, choice)


def default_out_dir(model: Path, suffix: str = "") -> Path:
    """A new directory ``./qbench-out/<model>[-suffix]-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("qbench-out") / f"{model.stem}{'-' + suffix if suffix else ''}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


