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
is tried, then released. Why a board failed under its job (it could not be started on, its agent
exited, its connection was lost) is kept for :mod:`qbench.host.lab.retry`.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from typing import Callable, Optional, Sequence

from pydantic import ValidationError

from ..errors import UserError
from ..inventory import Device
from ..transport.base import AgentTransport
from ..transport.ssh import SSHTransport
from . import health, lease, place_settings, quarantine
from .coordinator import Coordinator, connect, coordinator_address
from .options import LabOptions

HEALTH_ATTEMPTS = 2  # a tag-selected job whose board fails its health check takes one other board


class _StderrLines:
    """Lines to the terminal's stderr, through a copy of fd 2 taken now: quantizing silences fd 2
    (``qbench.host.quantize.quiet``) while the agent starts, and a wait for a board must still show."""

    def __init__(self):
        self._out = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)

    def __call__(self, line: str) -> None:
        self._out.write(f"qbench: {line}\n")


def board_device(device: Device, coordinator: Coordinator, place: str) -> Device:
    """``device`` on ``place``: host, port and user (unless it sets one) from the place's NetworkService,
    its password when the device has no key (never dumped), and the settings of the place's tags
    (:mod:`qbench.host.lab.place_settings`) over those of ``labgrid.defaults``.

    Raises:
        UserError: the place has no NetworkService, or a setting tag's value is invalid.
    """
    service = coordinator.network_service(place)
    from_tags = {k: v for k, v in place_settings.tag_settings(coordinator.place(place).tags).items()
                 if k not in device.own_settings}
    settings = device.model_dump(exclude_unset=True, exclude={"select"})
    settings.update(from_tags)
    settings.update(transport="ssh", place=place, host=service["address"], port=int(service.get("port") or 22),
                    user=device.user or service.get("username"))
    try:
        board = Device(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        setting = str(error["loc"][0]) if error.get("loc") else ""
        if setting not in from_tags:
            raise
        raise UserError(f"labgrid place {place}: tag {place_settings.tag_of(setting)}={from_tags[setting]}: "
                        f"{error['msg']}") from None
    board.use_service_password(service.get("password"))
    return board


class LabTransport(AgentTransport):
    """Runs the agent on a leased labgrid place (see the module docstring).

    Args:
        device: an inventory device with ``place`` or ``select`` and a coordinator.
        options: waiting and health settings.
        accept_new_host: trust an unknown SSH host key.
        notify: receives one line per lab event (waiting, taken over, failed health check).
        avoid: places not to run on (a retry's failed board): locked while another is found, then released.
    """

    def __init__(self, device: Device, options: LabOptions, accept_new_host: bool = False,
                 notify: Optional[Callable[[str], None]] = None, avoid: frozenset[str] = frozenset()):
        address = coordinator_address(device.coordinator)
        if not address:
            raise UserError(f"device {device.name!r} is a labgrid place but no coordinator is known: set "
                            "'labgrid: {coordinator: HOST:PORT}' in devices.yaml or $LG_COORDINATOR")
        self.device, self.options, self.accept_new_host = device, options, accept_new_host
        self.notify = notify or _StderrLines()
        self.address = address
        self.avoid = avoid
        what = f"place {device.place}" if device.place else f"tags {','.join(f'{k}={v}' for k, v in device.select.items())}"
        self.label = f"labgrid {what}"
        self.lease: Optional[lease.Lease] = None
        self.place: Optional[str] = None  # the place leased last (kept after the release)
        self.board: Optional[Device] = None
        self.retried_after: list[str] = []  # places of the tags that failed their health check before this one
        self.label_suffix = ""  # what the report's transport label adds (a retry says why it ran)
        # Why the board failed under the job (agent unreachable or gone), as opposed to the job failing on it.
        self.infrastructure_failure: Optional[str] = None
        self._inner: Optional[SSHTransport] = None
        atexit.register(self.stop)  # a run ended by an exception or Ctrl-C past the session still releases

    def lease_board(self) -> Device:
        """Lock a place that passes its health check (held until :meth:`stop`); the board to SSH to.

        Raises:
            UserError: no place became free in time, or the place (or the one retry) failed its check.
        """
        self.lease, self.board = self._lease_healthy(connect(self.address))
        self.place = self.lease.place
        return self.board

    def start(self, runtimes: Sequence[str] = ()) -> str:
        self.lease_board()
        try:
            self._inner = SSHTransport(self.board, accept_new_host=self.accept_new_host)
            acquired = datetime.datetime.fromtimestamp(self.lease.acquired_at, datetime.timezone.utc)
            retried = "".join(f"; {place} failed its health check first" for place in self.retried_after)
            self.label = (f"{self._inner.label} (labgrid place {self.lease.place}, locked "
                          f"{acquired.isoformat(timespec='milliseconds')} after {self.lease.waited_s:.1f} s"
                          f"{retried}{self.label_suffix})")
            return self._inner.start(runtimes)
        except UserError as exc:  # it passed its health check, yet cannot be deployed to or started on
            self.infrastructure_failure = (str(exc).splitlines() or [""])[0]
            self.stop()
            raise
        except BaseException:
            self.stop()
            raise

    def _lease_healthy(self, coordinator: Coordinator) -> tuple[lease.Lease, Device]:
        kept: list[lease.Lease] = []  # locked until a board is found, so that the next reservation gets another
        failed = 0
        try:
            while True:
                held = self.lease = self._acquire(coordinator)  # on self at once: a stop() now releases it
                if held.place in self.avoid:
                    kept.append(held)
                    self.lease = None
                    continue
                board = board_device(self.device, coordinator, held.place)
                problems = health.failures(health.check_device(board, self.accept_new_host)) \
                    if self.options.health_check else []
                if not problems:
                    if self.options.health_check:
                        quarantine.record_success(coordinator, held.place)
                    self.retried_after = [k.place for k in kept if k.place not in self.avoid]
                    return held, board
                count, quarantined = quarantine.record_failure(coordinator, held.place, problems[0],
                                                               self.options.quarantine_after)
                state = "quarantined" if quarantined else f"{count} of {self.options.quarantine_after} before quarantine"
                self.notify(f"labgrid place {held.place} failed its health check ({state}): {problems[0]}")
                kept.append(held)
                self.lease = None
                failed += 1
                if self.device.place or failed >= HEALTH_ATTEMPTS:
                    raise UserError(f"labgrid place {held.place} failed its health check: {problems[0]}"
                                    + ("" if self.device.place else f" (and {failed - 1} other tried)"))
                self.notify("trying another place with the same tags")
        finally:
            for held in kept:
                held.release()

    def _acquire(self, coordinator: Coordinator) -> lease.Lease:
        if self.device.place:
            return lease.acquire_named(coordinator, self.device.place, self.options.priority,
                                       self.options.wait_timeout_s, self.notify)
        return lease.acquire_by_tags(coordinator, self.device.select, self.options.priority,
                                     self.options.wait_timeout_s, self.notify)

    def stop(self) -> None:
        """Stop the agent, then release the place (idempotent)."""
        try:
            if self._inner is not None:
                if self.infrastructure_failure is None and self.lease is not None:
                    self.infrastructure_failure = self._inner.problem()  # the agent exited, the connection is lost
                self._inner.stop()  # kept: its stderr tail is read after the stop
        finally:
            held, self.lease = self.lease, None
            if held is not None:
                held.release()

    def retry_transport(self, failed):
        from .retry import another_board  # it makes the other board's LabTransport

        return another_board(self, failed)

    def stderr_tail(self, lines: int = 20) -> str:
        return self._inner.stderr_tail(lines) if self._inner is not None else ""
