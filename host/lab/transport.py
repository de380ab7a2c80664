"""The agent on a labgrid place: lease the place, check its health, then SSH as on any board.

:class:`LabTransport` is an :class:`~qbench.host.transport.base.AgentTransport` around
:class:`~qbench.host.transport.ssh.SSHTransport`: ``start()`` locks the place (by name, or any free
healthy place with the device's tags through a reservation), runs the health check, counts the
result in the coordinator (:mod:`qbench.host.lab.quarantine`), and deploys and starts the agent at
the address, user and port of the place's NetworkService; ``stop()`` stops the agent and then
releases the lock. The session stops its transport when the run succeeds, fails or is interrupted,
so the lock is held exactly while qbench deploys and measures; a process killed outright leaves a
stale lock that the next qbench of this host and user takes over (:mod:`qbench.host.lab.lease`).
A place chosen by tags that fails its health check is kept locked while one other matching place
is tried, then released.
"""

from __future__ import annotations

import atexit
import os
import datetime
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..errors import UserError
from ..inventory import Device
from ..transport.base import AgentTransport
from ..transport.ssh import SSHTransport
from . import health, lease, quarantine
from .coordinator import Coordinator, connect, coordinator_address

ATTEMPTS = 2  # a tag-selected job is retried on one other board after an infrastructure failure


@dataclass(frozen=True)
class LabOptions:
    """How a run waits for lab boards (``--wait-timeout``, ``--priority``) and treats their health."""

    wait_timeout_s: float = 600.0
    priority: float = 0.0
    quarantine_after: int = 3
    health_check: bool = True


class _StderrLines:
    """Lines to the terminal's stderr, through a copy of fd 2 taken now: quantizing silences fd 2
    (``qbench.host.quantize.quiet``) while the agent starts, and a wait for a board must still show."""

    def __init__(self):
        self._out = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)

    def __call__(self, line: str) -> None:
        self._out.write(f"qbench: {line}\n")


def board_device(device: Device, coordinator: Coordinator, place: str) -> Device:
    """``device`` with host, port and user (unless it sets one) from the place's NetworkService."""
    service = coordinator.network_service(place)
    settings = device.model_dump(exclude_unset=True, exclude={"select"})
    settings.update(transport="ssh", place=place, host=service["address"], port=int(service.get("port") or 22),
                    user=device.user or service.get("username"))
    return Device(**settings)


class LabTransport(AgentTransport):
    """Runs the agent on a leased labgrid place (see the module docstring).

    Args:
        device: an inventory device with ``place`` or ``select`` and a coordinator.
        options: waiting and health settings.
        accept_new_host: trust an unknown SSH host key.
        notify: receives one line per lab event (waiting, taken over, failed health check).
    """

    def __init__(self, device: Device, options: LabOptions, accept_new_host: bool = False,
                 notify: Optional[Callable[[str], None]] = None):
        address = coordinator_address(device.coordinator)
        if not address:
            raise UserError(f"device {device.name!r} is a labgrid place but no coordinator is known: set "
                            "'labgrid: {coordinator: HOST:PORT}' in devices.yaml or $LG_COORDINATOR")
        self.device, self.options, self._accept = device, options, accept_new_host
        self._notify = notify or _StderrLines()
        self.address = address
        what = f"place {device.place}" if device.place else f"tags {','.join(f'{k}={v}' for k, v in device.select.items())}"
        self.label = f"labgrid {what}"
        self.lease: Optional[lease.Lease] = None
        self.board: Optional[Device] = None
        self.retried_after: list[str] = []  # places of the tags that failed their health check before this one
        self._inner: Optional[SSHTransport] = None
        atexit.register(self.stop)  # a run ended by an exception or Ctrl-C past the session still releases

    def lease_board(self) -> Device:
        """Lock a place that passes its health check (held until :meth:`stop`); the board to SSH to.

        Raises:
            UserError: no place became free in time, or the place (or the one retry) failed its check.
        """
        self.lease, self.board = self._lease_healthy(connect(self.address))
        return self.board

    def start(self, runtimes: Sequence[str] = ()) -> str:
        self.lease_board()
        try:
            self._inner = SSHTransport(self.board, accept_new_host=self._accept)
            acquired = datetime.datetime.fromtimestamp(self.lease.acquired_at, datetime.timezone.utc)
            retried = "".join(f"; {place} failed its health check first" for place in self.retried_after)
            self.label = (f"{self._inner.label} (labgrid place {self.lease.place}, locked "
                          f"{acquired.isoformat(timespec='milliseconds')} after {self.lease.waited_s:.1f} s{retried})")
            return self._inner.start(runtimes)
        except BaseException:
            self.stop()
            raise

    def _lease_healthy(self, coordinator: Coordinator) -> tuple[lease.Lease, Device]:
        rejected: list[lease.Lease] = []
        try:
            while True:
                held = self.lease = self._acquire(coordinator)  # on self at once: a stop() now releases it
                board = board_device(self.device, coordinator, held.place)
                problems = health.failures(health.check_device(board, self._accept)) if self.options.health_check \
                    else []
                if not problems:
                    if self.options.health_check:
                        quarantine.record_success(coordinator, held.place)
                    self.retried_after = [r.place for r in rejected]
                    return held, board
                count, quarantined = quarantine.record_failure(coordinator, held.place, problems[0],
                                                               self.options.quarantine_after)
                state = "quarantined" if quarantined else f"{count} of {self.options.quarantine_after} before quarantine"
                self._notify(f"labgrid place {held.place} failed its health check ({state}): {problems[0]}")
                rejected.append(held)
                self.lease = None
                if self.device.place or len(rejected) >= ATTEMPTS:
                    raise UserError(f"labgrid place {held.place} failed its health check: {problems[0]}"
                                    + ("" if self.device.place else f" (and {len(rejected) - 1} other tried)"))
                self._notify("trying another place with the same tags")
        finally:
            for held in rejected:  # kept locked until now, so that the next reservation got another place
                held.release()

    def _acquire(self, coordinator: Coordinator) -> lease.Lease:
        if self.device.place:
            return lease.acquire_named(coordinator, self.device.place, self.options.wait_timeout_s, self._notify)
        return lease.acquire_by_tags(coordinator, self.device.select, self.options.priority,
                                     self.options.wait_timeout_s, self._notify)

    def stop(self) -> None:
        """Stop the agent, then release the place (idempotent)."""
        try:
            if self._inner is not None:
                self._inner.stop()  # kept: its stderr tail is read after the stop
        finally:
            held, self.lease = self.lease, None
            if held is not None:
                held.release()

    def stderr_tail(self, lines: int = 20) -> str:
        return self._inner.stderr_tail(lines) if self._inner is not None else ""
