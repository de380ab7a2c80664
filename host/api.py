"""The Python API: ``qbench.run``, ``compare``, ``calibrate`` and ``fix``, the commands of the same names.

Each takes the command's options as keyword arguments by their Python names (``runs=3``,
``calibration_method="entropy"``, ``fail_under_psnr=30``: the fields of
:class:`qbench.host.run_options.RunOptions`), measures on a device of devices.yaml (``device="local"``
needs none) and returns a typed result (:mod:`qbench.host.report.typed`).

Files are written only into ``out``; without it the run works in a temporary folder that is removed
on return, so the paths a result names there (the int8 model) no longer exist. A run is recorded in
the results database only when ``db`` names one (``qbench history --db DB`` lists it).

Errors are the CLI's: :class:`~qbench.host.errors.UserError` for bad input or an unreachable device,
:class:`~qbench.host.errors.RunFailed` (a UserError carrying the partial result) for a stage that
failed; an unknown option is a TypeError. A run interrupted by Ctrl-C raises KeyboardInterrupt after
its partial report is written (into ``out``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from qbench.protocols.messages import RunnerConfig

from . import session
from .calibrate import calibrate as calibrate_methods
from .calibrate import check_methods
from .run_options import RunOptions, runner_for
from .compare.output_quant import int8_output_qparams
from .errors import RunFailed, UserError
from .finish import COMPARE_JSON, record_published, write_compare, write_run
from .inventory import Device, load_inventory
from .ranking_sweep import measure_if_unexplained
from .run_state import INTERRUPTED, UI, RunSettings
from .fix_target import Target
from .repair import FAMILIES, Repair, check_names
from .report.typed import Comparison, Report
from .store.db import ResultsStore
from .targets import device_hellos, pair_settings, plan_targets, run_targets, target_settings
from .transport.factory import transport_for
from .trials import Trials

PathLike = Union[str, os.PathLike]

#: RunOptions fields that are parameters of their own here, or mean something only on a terminal
_NOT_OPTIONS = {"devices", "int8", "input_shape", "data", "calibration", "out", "db", "as_json", "quiet"}


class _WarningsUI(UI):
    """A run's warnings (random calibration data, ...) as Python warnings; its notes are in the report."""

    def warn(self, text: str) -> None:
        warnings.warn(text, UserWarning, stacklevel=2)


def run(model: PathLike, device: str = "local", int8: Optional[PathLike] = None, data: Optional[PathLike] = None,
        calibration: Optional[PathLike] = None, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
        out: Optional[PathLike] = None, *, providers: Sequence[str] = (), delegate: Optional[str] = None,
        devices: Optional[PathLike] = None, db: Optional[PathLike] = None, **options: Any) -> Report:
    """Quantizes ``model`` (unless ``int8`` is given), runs float and int8 on ``device`` and reports
    PSNR per output and layer, latency and memory: ``qbench run``.

    Args:
        model: the float model, .onnx or .tflite.
        device: a device of the inventory; ``local`` is this machine.
        int8: your own int8 model of ``model``; otherwise qbench quantizes it.
        data: evaluation samples (.npz, one (N, *shape) array per input); default: seeded random ones.
        calibration: calibration samples (.npz, as ``data``); default: random ones (a warning says so).
        input_shapes: input name -> shape, fixing dynamic dimensions.
        out: the folder to write report.json, report.html, the exports and the models into.
        providers: ONNX Runtime execution providers, in order (default: the device's).
        delegate: TFLite: ``xnnpack`` (default), ``none`` or an external delegate's name.
        devices: the inventory file (default: ``$QBENCH_DEVICES``, else ./devices.yaml).
        db: the results database to record the run in; not recorded without it.
        **options: ``qbench run``'s options by their Python names (``runs``, ``warmup``, ``min_seconds``,
            ``samples``, ``calibration_method``, ``accuracy_only``, ``fail_under_psnr``, ...).

    Returns:
        The report (``report.gate_failures`` lists the gates it failed).

    Raises:
        UserError: bad input or an unreachable device.
        RunFailed: a stage failed; ``.result`` is the partial report.
        TypeError: an unknown option.
    """
    opts = _options("run", options, int8=int8, data=data, calibration=calibration, input_shapes=input_shapes,
                    devices=devices)
    inventory = load_inventory(opts.devices)
    dev = inventory.get(device)
    runner = runner_for(Path(model), dev, opts, providers, delegate)
    with _folder(opts, out) as keep:
        settings = _settings(opts, model, device, runner)
        ui = _WarningsUI()
        state = session.run(settings, transport_for(dev, opts.accept_new_host, opts.lab(inventory)), ui)
        measure_if_unexplained(state, lambda: transport_for(dev, opts.accept_new_host, opts.lab(inventory)), ui)
        finished = write_run(state, dev, opts.gates(), _store(db), write=keep)
    report = Report.from_dict(finished.report, finished.path, finished.run_id)
    if state.error:
        if state.error.get("code") == INTERRUPTED:
            raise KeyboardInterrupt
        first_line = (state.error["message"].splitlines() or [""])[0]
        raise RunFailed(f"{state.error['stage']} failed: {first_line}{_kept(finished.path)}", report)
    return report


def compare(model: PathLike, device: Union[str, Sequence[str]] = "local", int8: Optional[PathLike] = None,
            data: Optional[PathLike] = None, calibration: Optional[PathLike] = None,
            input_shapes: Optional[Mapping[str, Sequence[int]]] = None, out: Optional[PathLike] = None, *,
            delegates: Sequence[str] = (), providers: Sequence[str] = (), devices: Optional[PathLike] = None,
            db: Optional[PathLike] = None, **options: Any) -> Comparison:
    """Runs one float/int8 pair on every target (devices x delegates or provider chains) and compares
    them: ``qbench compare``.

    Args:
        model, int8, data, calibration, input_shapes, out, devices, db, options: as :func:`run`
            (``out`` gets compare.json, compare.html and one folder per target).
        device: one device or several, a target each.
        delegates: TFLite: a target per delegate on every device.
        providers: ONNX: a target per provider chain (``"A,B"`` is one chain) on every device.

    Returns:
        The comparison: its table and every target's report.

    Raises:
        UserError: bad input, an unknown device, a delegate for ONNX or a provider for TFLite.
        RunFailed: a target failed; ``.result`` is the comparison, with the others' results.
        TypeError: an unknown option.
    """
    opts = _options("compare", options, int8=int8, data=data, calibration=calibration, input_shapes=input_shapes,
                    devices=devices)
    inventory = load_inventory(opts.devices)
    devs = [inventory.get(name) for name in ([device] if isinstance(device, str) else list(device) or ["local"])]
    targets = plan_targets(devs, list(delegates), list(providers),
                           lambda dev, chain, variant: runner_for(Path(model), dev, opts, chain, variant))
    lab = opts.lab(inventory)
    ui = _WarningsUI()
    with _folder(opts, out) as keep:
        base = _settings(opts, model, targets[0].device.name, dataclasses.replace(targets[0].runner), suffix="compare")
        folder = base.out_dir

        def transport(t):
            return transport_for(t.device, opts.accept_new_host, lab)

        prepared, float_path, int8_path = session.prepare_pair(
            base, ui, lambda: device_hellos(targets, transport, base.timeout_s))
        pair = pair_settings(base, float_path, int8_path)
        runs = run_targets(targets, lambda t: target_settings(pair, t), transport, lambda t: ui)
        doc = write_compare(runs, prepared, opts.gates(), _store(db), folder, int8_output_qparams(int8_path), keep)
    result = Comparison.from_dict(doc, folder / COMPARE_JSON if keep else None)
    failed = [run.target.label for run in runs if run.failure]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(runs)} targets failed ({', '.join(failed)}; why: in .errors)",
                        result)
    return result


def calibrate(model: PathLike, device: str = "local", data: Optional[PathLike] = None,
              calibration: Optional[PathLike] = None, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
              out: Optional[PathLike] = None, *, methods: Optional[Sequence[str]] = None,
              devices: Optional[PathLike] = None, db: Optional[PathLike] = None, **options: Any) -> Report:
    """Quantizes ``model`` once per calibration method, measures each on ``device`` and keeps the best
    (highest output PSNR; ties: lower int8 latency): ``qbench calibrate``.

    Args:
        model, device, data, calibration, input_shapes, out, devices, db, options: as :func:`run`
            (``calibration_method`` does not apply; ``out`` also gets one folder per method).
        methods: the methods to try (default: every one of the model's format).

    Returns:
        The winner's report; ``report.section("calibration")`` holds the methods table and the winner.

    Raises:
        UserError: bad input, a method the format does not offer, or no method could quantize the model.
        TypeError: an unknown option.
    """
    if "calibration_method" in options:
        raise TypeError("qbench.calibrate() tries every method of methods=; calibration_method does not apply")
    opts = _options("calibrate", options, data=data, calibration=calibration, input_shapes=input_shapes,
                    devices=devices)
    with _trials(opts, model, device, out) as (trials, keep):
        chosen = check_methods(None if methods is None else list(methods), trials.format.methods,
                               trials.format.name)
        path, published = calibrate_methods(trials, chosen)
        return _published(published, path if keep else None, opts, db)


def fix(model: PathLike, target_psnr: Optional[float] = None, device: str = "local", data: Optional[PathLike] = None,
        calibration: Optional[PathLike] = None, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
        out: Optional[PathLike] = None, *, target_top1: Optional[float] = None,
        methods: Optional[Sequence[str]] = None, blocks: int = 16, remedies: Sequence[str] = FAMILIES,
        devices: Optional[PathLike] = None, db: Optional[PathLike] = None, **options: Any) -> Report:
    """Quantizes ``model``, then searches for the smallest change that reaches the target, measuring
    every candidate on ``device``: ``qbench fix``, the same remedy search for ONNX and TFLite
    (calibration method per model and per tensor, int16 activations and float per block, ordered by
    measured sensitivity).

    Args:
        model, device, data, calibration, input_shapes, out, devices, db, options: as :func:`run`
            (``calibration_method`` does not apply: see ``methods``).
        target_psnr: the output PSNR to reach, in dB.
        target_top1: the top-1 agreement (0..1) to reach on the outputs read by argmax (CTC: sequence
            agreement). At least one of the two; a ``broken`` output verdict never meets the target.
        methods: calibration methods to try per model (default: the format's ``fix_methods``).
        blocks: blocks of ops the search moves.
        remedies: configuration families to search.

    Returns:
        The final model's report; ``report.section("fix")`` says whether the target was ``met`` and how.

    Raises:
        UserError: bad input.
        TypeError: an unknown option.
    """
    if "calibration_method" in options:
        raise TypeError("qbench.fix() tries the calibration methods of methods=; calibration_method does not apply")
    target = Target.of(target_psnr, target_top1)
    opts = _options("fix", options, data=data, calibration=calibration, input_shapes=input_shapes, devices=devices)
    with _trials(opts, model, device, out) as (trials, keep):
        result = Repair(trials, target, None if methods is None else tuple(methods), blocks,
                        check_names(tuple(remedies), "remedies", FAMILIES)).run()
        return _published(result.report, result.report_path if keep else None, opts, db)


def _options(command: str, given: Mapping[str, Any], *, input_shapes: Optional[Mapping[str, Sequence[int]]],
             **own: Any) -> RunOptions:
    """The command's options as the CLI would have them, checked as the CLI checks them.

    Raises:
        TypeError: an option the command does not take.
        UserError: a value out of the option's range, or one :meth:`RunOptions.validate` refuses.
    """
    known = {f.name for f in dataclasses.fields(RunOptions)} - _NOT_OPTIONS
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"qbench.{command}() got unknown option(s) {', '.join(unknown)}; "
                        f"its options are {', '.join(sorted(known))}")
    paths = {name: Path(value) for name, value in {**own, **given}.items()
             if name in ("int8", "data", "calibration", "devices", "save_tensors") and value is not None}
    shapes = [f"{name}:{','.join(str(d) for d in dims)}" for name, dims in (input_shapes or {}).items()]
    opts = RunOptions(**{**own, **given, **paths}, input_shape=shapes, quiet=True)
    _check_ranges(opts)
    opts.validate()
    return opts


def _check_ranges(opts: RunOptions) -> None:
    """The ``min``/``max`` of each option's typer declaration, which typer checks only on a command line."""
    hints = typing.get_type_hints(RunOptions, include_extras=True)
    for f in dataclasses.fields(RunOptions):
        value = getattr(opts, f.name)
        for info in getattr(hints[f.name], "__metadata__", ()):
            low, high = getattr(info, "min", None), getattr(info, "max", None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if low is not None and value < low:
                    raise UserError(f"{f.name} must be at least {low}, not {value!r}")
                if high is not None and value > high:
                    raise UserError(f"{f.name} must be at most {high}, not {value!r}")


def _settings(opts: RunOptions, model: PathLike, device: str, runner: RunnerConfig, debug: bool = False,
              suffix: str = "") -> RunSettings:
    """The one place the API makes a run's settings (checked against the model's format; ``opts.out`` made)."""
    return opts.settings(Path(model), device, runner, debug, suffix)


@contextlib.contextmanager
def _folder(opts: RunOptions, out: Optional[PathLike]) -> Iterator[bool]:
    """Sets ``opts.out``: ``out`` (kept), else a temporary folder removed on leaving; yields whether it is kept."""
    if out is not None:
        opts.out = Path(out)
        yield True
        return
    with tempfile.TemporaryDirectory(prefix="qbench-") as tmp:
        opts.out = Path(tmp)
        yield False


@contextlib.contextmanager
def _trials(opts: RunOptions, model: PathLike, device: str, out: Optional[PathLike]) -> Iterator[tuple[Trials, bool]]:
    """:func:`make_trials` in ``out`` or a temporary folder; yields them and whether the folder is kept."""
    dev = load_inventory(opts.devices).get(device)
    with _folder(opts, out) as keep:
        yield make_trials(opts, model, dev, _WarningsUI(), debug=False), keep


def make_trials(opts: RunOptions, model: PathLike, dev: Device, ui: UI, debug: bool, suffix: str = "") -> Trials:
    """The trials of ``calibrate`` and ``fix``: ``model`` on ``dev`` with the shared options, the gates
    recorded in the published report. Trials skip ``run``'s per-op profiling session: it would be
    repeated for every candidate."""
    runner = runner_for(Path(model), dev, opts)
    settings = dataclasses.replace(_settings(opts, model, dev.name, runner, debug, suffix), profile_runs=0)
    return Trials(settings, lambda: transport_for(dev, opts.accept_new_host), ui, bool(dev.emulation),
                  sections={"gates": opts.gates().to_dict()})


def _published(report: dict[str, Any], path: Optional[Path], opts: RunOptions, db: Optional[PathLike]) -> Report:
    run_id, _ = record_published(report, path, opts.gates(), _store(db))
    return Report.from_dict(report, path, run_id)


def _store(db: Optional[PathLike]) -> Optional[ResultsStore]:
    return ResultsStore(db) if db is not None else None


def _kept(path: Optional[Path]) -> str:
    return f" (partial report in {path})" if path is not None else ""
