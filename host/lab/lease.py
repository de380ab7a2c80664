"""Leases: a labgrid lock on a place, held by one qbench controller for one job, and its recovery.

labgrid enforces a lock (``acquire``) in the coordinator: a second acquire fails. A lock has no
timeout and outlives its process, and labgrid knows its holder only as ``host/user``, so two
qbench processes of one user on one machine look alike to it. qbench therefore writes its own
lease token into the place's tags (``qbench-lease=<pid>-<process start, ms>``) right after
acquiring, and removes it right before releasing. A place locked by this ``host/user`` whose token
names a process that is gone (or a reused pid with another start time) is a stale lock of a killed
qbench: it is taken over (token written first and read back, then release and acquire, so that of
two controllers taking over at once one backs off). A lock without a token, or of another
``host/user``, is someone else's: qbench waits for it, and only ``qbench lab release`` breaks it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import psutil

from ..errors import UserError
from .coordinator import Coordinator, PlaceInfo

log = logging.getLogger("qbench")

LEASE_TAG = "qbench-lease"
HEALTH_TAG = "qbench-health"  # ok | bad (quarantined)
FAILS_TAG = "qbench-fails"  # consecutive failed health checks
POLL_S = 0.5
_TAKEOVER_SETTLE_S = 0.3

Notify = Callable[[str], None]


def own_token(pid: Optional[int] = None) -> str:
    """This process's lease token: its pid and start time, which tell a live holder from a reused pid."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def token_alive(token: str) -> bool:
    """Whether the process a token names (on this machine) still runs."""
    try:
        pid, started = (int(part) for part in token.split("-", 1))
        return own_token(pid) == f"{pid}-{started}"
    except (ValueError, psutil.Error):
        return False


@dataclass
class Lease:
    """A place this process holds; :meth:`release` gives it back (once)."""

    coordinator: Coordinator
    place: str
    token: str
    acquired_at: float
    waited_s: float
    took_over: Optional[str] = None  # the stale token replaced, if any
    released: bool = field(default=False)

    def release(self) -> None:
        """Remove our token and release the lock; a coordinator that lost the lock is only warned about."""
        if self.released:
            return
        self.released = True
        try:
            self.coordinator.set_tags(self.place, {LEASE_TAG: ""})
            self.coordinator.release(self.place)
        except UserError as exc:
            log.warning("qbench: could not release labgrid place %s (did the coordinator restart? its locks are "
                        "gone then): %s", self.place, exc)


def holder_text(place: PlaceInfo, coordinator: Coordinator) -> str:
    """Who holds ``place``, for people: ``host/user``, and which qbench process if it is one."""
    token = place.tags.get(LEASE_TAG)
    if place.acquired != coordinator.holder or not token:
        return place.acquired or "nobody"
    state = "running" if token_alive(token) else "gone: stale"
    return f"{place.acquired} (qbench pid {token.split('-')[0]}, {state})"


def is_stale(place: PlaceInfo, coordinator: Coordinator) -> bool:
    """Locked by this host/user with the token of a qbench process that no longer runs."""
    token = place.tags.get(LEASE_TAG)
    return bool(place.acquired) and place.acquired == coordinator.holder and bool(token) and not token_alive(token)


def try_acquire(coordinator: Coordinator, name: str, token: str) -> Optional[str]:
    """Acquire ``name`` now if it is free or stale; the stale token taken over ("" if none), or None if busy."""
    place = coordinator.place(name)
    stale = ""
    if place.acquired:
        if not is_stale(place, coordinator):
            return None
        stale = place.tags[LEASE_TAG]
        coordinator.set_tags(name, {LEASE_TAG: token})
        time.sleep(_TAKEOVER_SETTLE_S)  # a second controller taking over too writes its token: last one wins
        if coordinator.place(name).tags.get(LEASE_TAG) != token:
            return None
        coordinator.release(name)
    try:
        coordinator.acquire(name)
    except UserError as exc:
        if "already acquired" in str(exc) or "not reserved" in str(exc):
            return None  # someone was faster
        raise
    coordinator.set_tags(name, {LEASE_TAG: token})
    return stale


def acquire_named(coordinator: Coordinator, name: str, wait_timeout_s: float, notify: Notify) -> Lease:
    """Lock place ``name``, waiting up to ``wait_timeout_s`` for its holder.

    Raises:
        UserError: the place is quarantined, does not exist, or stays locked past the timeout.
    """
    token, start, said = own_token(), time.monotonic(), ""
    while True:
        place = coordinator.place(name)
        if place.tags.get(HEALTH_TAG) == "bad":
            raise UserError(f"labgrid place {name} is quarantined ({place.comment or 'failed health checks'}); "
                            f"qbench lab unquarantine {name} once it is fixed")
        stale = try_acquire(coordinator, name, token)
        if stale is not None:
            waited = time.monotonic() - start
            if stale:
                notify(f"labgrid place {name}: took over the stale lock of qbench pid {stale.split('-')[0]}")
            return Lease(coordinator, name, token, time.time(), waited, took_over=stale or None)
        waited = time.monotonic() - start
        if waited >= wait_timeout_s:
            raise UserError(f"labgrid place {name} is still locked by {holder_text(coordinator.place(name), coordinator)} "
                            f"after {wait_timeout_s:g} s (--wait-timeout)")
        line = f"waiting for labgrid place {name}, locked by {holder_text(place, coordinator)}"
        if line != said:
            notify(line)
            said = line
        time.sleep(POLL_S)


def acquire_by_tags(coordinator: Coordinator, tags: dict[str, str], priority: float, wait_timeout_s: float,
                    notify: Notify) -> Lease:
    """Lock any free, healthy place with ``tags``, through a labgrid reservation (queued by priority, then age).

    Places without a health tag get ``qbench-health=ok`` first, so that the reservation can ask for it
    and never be given a quarantined place.

    Raises:
        UserError: no place has these tags, or none became free within ``wait_timeout_s``.
    """
    matching = [p for p in coordinator.places().values() if all(p.tags.get(k) == v for k, v in tags.items())]
    if not matching:
        raise UserError(f"no labgrid place on {coordinator.address} has the tags "
                        f"{', '.join(f'{k}={v}' for k, v in tags.items())}")
    for place in matching:
        if HEALTH_TAG not in place.tags:
            coordinator.set_tags(place.name, {HEALTH_TAG: "ok"})
    if all(p.tags.get(HEALTH_TAG) == "bad" for p in matching):
        raise UserError(f"every labgrid place with these tags is quarantined: {', '.join(p.name for p in matching)} "
                        "(qbench lab status)")
    token, start = own_token(), time.monotonic()
    reservation = coordinator.reserve({**tags, HEALTH_TAG: "ok"}, priority)
    try:
        notify(f"labgrid: reservation {reservation.token} for {_tags_text(tags)} (priority {priority:g})")
        said = ""
        while True:
            state = coordinator.poll(reservation.token)
            if state.state in ("allocated", "acquired") and state.place:
                if try_acquire(coordinator, state.place, token) is not None:
                    return Lease(coordinator, state.place, token, time.time(), time.monotonic() - start)
            elif state.state in ("expired", "invalid"):
                raise UserError(f"labgrid reservation {reservation.token} is {state.state}")
            waited = time.monotonic() - start
            if waited >= wait_timeout_s:
                raise UserError(f"no labgrid place with {_tags_text(tags)} became free within {wait_timeout_s:g} s "
                                f"(--wait-timeout); qbench lab status shows who holds them")
            line = f"waiting for a free place with {_tags_text(tags)} ({len(matching)} match)"
            if line != said:
                notify(line)
                said = line
            time.sleep(POLL_S)
    finally:
        try:
            coordinator.cancel(reservation.token)
        except UserError:
            pass  # expired already, or the coordinator is gone: nothing is held by it


def _tags_text(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in tags.items())
