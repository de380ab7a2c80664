"""The targets of `qbench compare`, and running one float/int8 pair on all of them.

A target is a device with one runner configuration (a delegate or a provider chain).
Targets on different machines run at the same time, a thread each with its own
transport and agent. Targets on the same machine run one after another: concurrent
runs would distort each other's timings. Every local device is this machine; an SSH
device is its host and port.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from qbench.protocols.messages import HelloReply, RunnerConfig

from . import session
from .errors import UserError
from .inventory import Device
from .run_state import UI, RunSettings, RunState
from .transport.base import AgentTransport

log = logging.getLogger("qbench")


def runner_label(providers: Sequence[str]) -> str:
    """How labels name a runner: ONNX Runtime's provider chain without ``ExecutionProvider``
    (``Xnnpack,CPU``), TFLite's delegate (``xnnpack``, ``none``) or ``CompiledModel:<accelerator>``
    (a report's ``device.providers``)."""
    return ",".join(p.replace("ExecutionProvider", "") for p in providers)


def target_label(device: str, providers: Sequence[str]) -> str:
    """``device:runner``: what the report and history call where and how a run ran."""
    return f"{device}:{runner_label(providers)}" if providers else device


@dataclass
class Target:
    """One column of the comparison: where and how the pair runs.

    Attributes:
        label: unique, shown in every table (``device`` or ``device:variant``).
        device: from the inventory.
        runner: how the worker builds its session there.
    """

    label: str
    device: Device
    runner: RunnerConfig

    @property
    def dirname(self) -> str:
        """The label as a directory name (the target's report goes there)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("._") or "target"

    @property
    def machine(self) -> str:
        """Which machine the target's timings run on; one machine's targets never run at once."""
        return "local" if self.device.transport == "local" else f"{self.device.host}:{self.device.port}"


@dataclass
class TargetRun:
    """A target's run: its state, or why it could not start.

    Attributes:
        target: the target.
        state: the run's state (``state.error`` says which stage failed); None when it never started.
        error: why it never started (``state`` is None then).
    """

    target: Target
    state: Optional[RunState] = None
    error: Optional[str] = None

    @property
    def failure(self) -> Optional[str]:
        """One line saying why this target failed, None when it ran."""
        if self.error is not None:
            return self.error
        if self.state is not None and self.state.error:
            first = (self.state.error["message"].splitlines() or [""])[0]
            return f"{self.state.error['stage']} failed: {first}"
        return None


#: the runner of a target on ``device``: ONNX's provider chain, or TFLite's delegate (None: the device's)
RunnerFor = Callable[[Device, Sequence[str], Optional[str]], RunnerConfig]


def plan_targets(devices: list[Device], delegates: list[str], providers: list[str],
                 runner_for: RunnerFor) -> list[Target]:
    """Every device with every delegate (TFLite) or provider chain (ONNX); just the devices without either.

    A target's label is ``device`` or ``device:variant`` (``ExecutionProvider`` left out of provider names).
    A provider variant ``A,B`` is one chain.

    Args:
        runner_for: the runner of a device with a provider chain (empty: the device's) and a delegate
            (None: the device's); the model's format refuses the other format's (a delegate for ONNX).

    Raises:
        UserError: a target given twice, or what ``runner_for`` refuses.
    """
    targets: dict[str, Target] = {}
    for dev in devices:
        for variant in delegates or providers or [None]:
            label = dev.name if variant is None else target_label(dev.name, [variant])
            if label in targets:
                raise UserError(f"target {label} is given twice")
            chain = [p.strip() for p in variant.split(",") if p.strip()] if providers and variant else []
            targets[label] = Target(label, dev, runner_for(dev, chain, variant if delegates else None))
    return list(targets.values())


def pair_settings(base: RunSettings, float_path: Path, int8_path: Path) -> RunSettings:
    """The settings every target shares: the pair :func:`qbench.host.session.prepare_pair` made of ``base``,
    given as the int8 model, so that nothing is left to quantize or equalize and every target measures
    the very same files (reported under the user's model)."""
    return dataclasses.replace(base, model=float_path, int8=int8_path, equalize=False, bias_correction=False,
                               return_outputs=True,
                               user_model=base.model)


def target_settings(pair: RunSettings, target: Target) -> RunSettings:
    """One target's settings: the pair's on its device, with its runner, in its own folder of ``out_dir``."""
    return dataclasses.replace(pair, device=target.device.name, runner=target.runner,
                               out_dir=pair.out_dir / target.dirname)


def run_retrying(run_on: Callable[[AgentTransport], RunState], transport: AgentTransport) -> RunState:
    """``run_on(transport)``, and once more where the transport says after a failure of the device itself
    (:meth:`AgentTransport.retry_transport <qbench.host.transport.base.AgentTransport.retry_transport>`)."""
    state = run_on(transport)
    retry = transport.retry_transport(state)
    if retry is None:
        return state
    again, why = retry
    retried = run_on(again)
    retried.notes.append(f"retried once on {again.label} after an infrastructure failure: {why}")
    return retried


def device_hellos(targets: list[Target], transport_for: Callable[[Target], AgentTransport],
                  timeout_s: float) -> dict[str, HelloReply | None]:
    """Each target device's hello, by device name: what ``compare`` quantizes its shared pair for.

    One agent per device, started for its hello alone (all at once, a thread each) and stopped after,
    as a run's own agent would be. A device whose agent does not start gives None; its run then says why.
    """
    firsts: dict[str, Target] = {}
    for target in targets:
        firsts.setdefault(target.device.name, target)
    starts = {name: session.AgentStart(transport_for(t), timeout_s, [t.runner.runtime]) for name, t in firsts.items()}
    hellos: dict[str, HelloReply | None] = {}
    for name, start in starts.items():
        hellos[name] = start.result()[1]
        start.abandon()
    return hellos


def run_targets(targets: list[Target], settings_for: Callable[[Target], RunSettings],
                transport_for: Callable[[Target], AgentTransport],
                ui_for: Callable[[Target], UI]) -> list[TargetRun]:
    """Run every target; a target that fails never takes the others' results with it.

    Args:
        targets: distinct labels.
        settings_for: the run settings of a target (its own ``out_dir``).
        transport_for: a not-yet-started transport to the target's device.
        ui_for: where a target's stages and progress go (called from the target's thread).

    Returns:
        One run per target, in the order of ``targets``.
    """
    machines: dict[str, list[Target]] = {}
    for target in targets:
        machines.setdefault(target.machine, []).append(target)

    def run_machine(group: list[Target]) -> list[TargetRun]:
        return [_run_one(t, settings_for, transport_for, ui_for) for t in group]

    with ThreadPoolExecutor(max_workers=len(machines), thread_name_prefix="qbench-target") as pool:
        done = [run for future in [pool.submit(run_machine, g) for g in machines.values()] for run in future.result()]
    by_label = {run.target.label: run for run in done}
    return [by_label[t.label] for t in targets]


def _run_one(target: Target, settings_for: Callable[[Target], RunSettings],
             transport_for: Callable[[Target], AgentTransport], ui_for: Callable[[Target], UI]) -> TargetRun:
    try:
        settings, ui = settings_for(target), ui_for(target)
        return TargetRun(target, state=run_retrying(lambda on: session.run(settings, on, ui), transport_for(target)))
    except UserError as exc:
        return TargetRun(target, error=str(exc))
    except Exception as exc:  # one target's bug must not lose every other target's results
        log.debug("target %s failed", target.label, exc_info=True)
        return TargetRun(target, error=f"{type(exc).__name__}: {exc}")
