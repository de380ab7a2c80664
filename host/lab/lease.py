"""Leases: a labgrid lock on a place, held by one qbench controller for one job, and its recovery.

labgrid enforces a lock (``acquire``) in the coordinator: a second acquire fails. A lock has no
timeout and outlives its process, and labgrid knows its holder only as ``host/user``, so two
qbench processes of one user on one machine look alike to it. qbench tells them apart with a
lease tag, ``qbench-lease=<pid>-<process start, ms>-<reservation>``, and it writes that tag
*before* it locks, so that no crash leaves a lock of ours without one:

1. Every lease starts as a labgrid reservation (a named place: the filter ``name=PLACE``; a
   ``tag:`` selection: its tags), so the coordinator queues requests by priority, then age.
2. Once the reservation is given a place, no other user can lock it. qbench writes its lease tag,
   naming the reservation, and only then locks the place.
3. The reservation is kept while the lock is held (labgrid never expires a reservation whose place
   is locked); release gives back the lock, then cancels the reservation.

A place is a stale lock of a killed qbench when it is locked by this ``host/user``, its lease tag
names the reservation the place is held under, and the tag's process is gone (or its pid was
reused: the start time differs). The reservation in the tag is what ties the tag to this very
lock: a tag left by a process killed before it locked, or after it gave the place back, names a
reservation that is gone, and a lock taken later (by a person with ``labgrid-client``) is not
held under it. A stale lock is taken over: the taker writes its own token into the tag (keeping
the dead one's reservation, so that a taker killed now leaves a lock still recognisable as
stale), reads it back after a moment (of two takers one backs off), then releases the lock and
cancels the dead reservation; its own reservation then gets the place in the queue's order.
Any other lock is someone else's: qbench waits for it, and only ``qbench lab release`` breaks it.
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

LEASE_TAG = "qbench-lease"  # <pid>-<start ms>-<reservation token>
HEALTH_TAG = "qbench-health"  # ok | bad (quarantined)
FAILS_TAG = "qbench-fails"  # consecutive failed health checks
POLL_S = 0.5
_TAKEOVER_SETTLE_S = 0.3

Notify = Callable[[str], None]


def own_token(pid: Optional[int] = None) -> str:
    """This process's token: its pid and start time, which tell a live holder from a reused pid."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def token_alive(token: str) -> bool:
    """Whether the process a token names (on this machine) still runs."""
    try:
        pid, started = (int(part) for part in token.split("-", 1))
        return own_token(pid) == f"{pid}-{started}"
    except (ValueError, psutil.Error):
        return False


def _tag_value(token: str, reservation: str) -> str:
    return f"{token}-{reservation}"


def _parse_tag(value: str) -> tuple[str, str]:
    """(process token, reservation token) of a lease tag; ("", "") when it is not one."""
    pid, sep1, rest = value.partition("-")
    started, sep2, reservation = rest.partition("-")
    return (f"{pid}-{started}", reservation) if sep1 and sep2 and reservation else ("", "")


@dataclass
class Lease:
    """A place this process holds under ``reservation``; :meth:`release` gives it back (once)."""

    coordinator: Coordinator
    place: str
    token: str
    reservation: str
    acquired_at: float
    waited_s: float
    released: bool = field(default=False)

    def release(self) -> None:
        """Release the lock, then cancel the reservation; a coordinator that lost them is only warned about."""
        if self.released:
            return
        self.released = True
        try:
            give_back(self.coordinator, self.place, self.reservation)
        except UserError as exc:
            log.warning("qbench: could not release labgrid place %s (did the coordinator restart? its locks are "
                        "gone then): %s", self.place, exc)


def give_back(coordinator: Coordinator, place: str, reservation: Optional[str], locked: bool = True) -> None:
    """Release ``place`` (when ``locked``) and then cancel the reservation it was held under: the one way a
    lease ends.

    In this order the place stays allocated to the reservation between the two calls, so no one
    else locks it while its lease tag still describes the old lock. A reservation already gone
    (a coordinator restart, an admin) is not an error.
    """
    if locked:
        coordinator.release(place)
    if reservation:
        try:
            coordinator.cancel(reservation)
        except UserError as exc:
            if "does not exist" not in str(exc):
                raise


def holder_text(place: PlaceInfo, coordinator: Coordinator) -> str:
    """Who holds ``place``, for people: ``host/user``, and which qbench process if it is one."""
    token, reservation = _parse_tag(place.tags.get(LEASE_TAG, ""))
    if place.acquired != coordinator.holder or not token or reservation != place.reservation:
        return place.acquired or "nobody"
    state = "running" if token_alive(token) else "gone: stale"
    return f"{place.acquired} (qbench pid {token.split('-')[0]}, {state})"


def qbench_reservation(place: PlaceInfo, coordinator: Coordinator) -> Optional[str]:
    """The reservation a qbench lease of this host/user holds ``place`` under, if it is one."""
    token, reservation = _parse_tag(place.tags.get(LEASE_TAG, ""))
    ours = place.acquired == coordinator.holder and token and reservation == place.reservation
    return reservation if ours else None


def is_stale(place: PlaceInfo, coordinator: Coordinator) -> bool:
    """The lease of a qbench of this host/user that no longer runs: locked under its reservation, or only
    allocated to it (killed between the allocation and its lock; labgrid would keep the place 60 s)."""
    token, reservation = _parse_tag(place.tags.get(LEASE_TAG, ""))
    if not token or reservation != place.reservation or token_alive(token):
        return False
    if place.acquired:
        return place.acquired == coordinator.holder
    # not locked: the tag's pid means something only if the reservation is this host/user's
    return any(r.token == reservation and r.owner == coordinator.holder for r in coordinator.reservations())


def _take_over(coordinator: Coordinator, place: PlaceInfo, token: str) -> Optional[str]:
    """Free a stale lease; the dead process's token, or None if another taker was faster."""
    dead, reservation = _parse_tag(place.tags[LEASE_TAG])
    coordinator.set_tags(place.name, {LEASE_TAG: _tag_value(token, reservation)})
    time.sleep(_TAKEOVER_SETTLE_S)  # a second taker writes its token too: the last one wins
    now = coordinator.place(place.name)
    if now.tags.get(LEASE_TAG) != _tag_value(token, reservation) or now.reservation != reservation:
        return None
    give_back(coordinator, place.name, reservation, locked=bool(now.acquired))
    return dead


def _claim(coordinator: Coordinator, name: str, token: str, reservation: str) -> bool:
    """Tag, then lock, the place allocated to our reservation; False if someone (of this user) was faster."""
    coordinator.set_tags(name, {LEASE_TAG: _tag_value(token, reservation)})
    try:
        coordinator.acquire(name)
    except UserError as exc:
        if "already acquired" in str(exc) or "not reserved" in str(exc):
            return False
        raise
    return True


def acquire_named(coordinator: Coordinator, name: str, priority: float, wait_timeout_s: float,
                  notify: Notify) -> Lease:
    """Lock place ``name``, waiting up to ``wait_timeout_s`` for its holder.

    Raises:
        UserError: the place is quarantined, does not exist, or stays locked past the timeout.
    """
    def candidates() -> list[PlaceInfo]:
        place = coordinator.place(name)
        if place.tags.get(HEALTH_TAG) == "bad":
            raise UserError(f"labgrid place {name} is quarantined ({place.comment or 'failed health checks'}); "
                            f"qbench lab unquarantine {name} once it is fixed")
        return [place]

    def waiting(places: list[PlaceInfo]) -> str:
        return f"waiting for labgrid place {name}, locked by {holder_text(places[0], coordinator)}"

    def timed_out() -> str:
        return (f"labgrid place {name} is still locked by {holder_text(coordinator.place(name), coordinator)} "
                f"after {wait_timeout_s:g} s (--wait-timeout)")

    candidates()
    return _acquire(coordinator, {"name": name}, priority, wait_timeout_s, notify, candidates, waiting, timed_out)


def acquire_by_tags(coordinator: Coordinator, tags: dict[str, str], priority: float, wait_timeout_s: float,
                    notify: Notify) -> Lease:
    """Lock any free, healthy place with ``tags`` (queued by priority, then age).

    Places without a health tag get ``qbench-health=ok`` first, so that the reservation can ask for it
    and never be given a quarantined place.

    Raises:
        UserError: no place has these tags, or none became free within ``wait_timeout_s``.
    """
    def candidates() -> list[PlaceInfo]:
        return [p for p in coordinator.places().values() if all(p.tags.get(k) == v for k, v in tags.items())]

    matching = candidates()
    if not matching:
        raise UserError(f"no labgrid place on {coordinator.address} has the tags {_tags_text(tags)}")
    for place in matching:
        if HEALTH_TAG not in place.tags:
            coordinator.set_tags(place.name, {HEALTH_TAG: "ok"})
    if all(p.tags.get(HEALTH_TAG) == "bad" for p in matching):
        raise UserError(f"every labgrid place with these tags is quarantined: {', '.join(p.name for p in matching)} "
                        "(qbench lab status)")

    def waiting(places: list[PlaceInfo]) -> str:
        return f"waiting for a free place with {_tags_text(tags)} ({len(places)} match)"

    def timed_out() -> str:
        return (f"no labgrid place with {_tags_text(tags)} became free within {wait_timeout_s:g} s "
                f"(--wait-timeout); qbench lab status shows who holds them")

    return _acquire(coordinator, {**tags, HEALTH_TAG: "ok"}, priority, wait_timeout_s, notify, candidates, waiting,
                    timed_out)


def _acquire(coordinator: Coordinator, filters: dict[str, str], priority: float, wait_timeout_s: float,
             notify: Notify, candidates: Callable[[], list[PlaceInfo]], waiting: Callable[[list[PlaceInfo]], str],
             timed_out: Callable[[], str]) -> Lease:
    """Reserve, wait for the place (taking over stale locks of ``candidates`` meanwhile), tag it and lock it."""
    token, start = own_token(), time.monotonic()
    reservation = coordinator.reserve(filters, priority).token
    held = False
    try:
        notify(f"labgrid: reservation {reservation} for {_tags_text(filters)} (priority {priority:g})")
        said = ""
        while True:
            state = coordinator.poll(reservation)
            if state.state == "allocated" and state.place and _claim(coordinator, state.place, token, reservation):
                held = True
                return Lease(coordinator, state.place, token, reservation, time.time(), time.monotonic() - start)
            if state.state in ("expired", "invalid"):
                raise UserError(f"labgrid reservation {reservation} is {state.state}")
            places = candidates()
            for place in places:
                if is_stale(place, coordinator):
                    dead = _take_over(coordinator, place, token)
                    if dead:
                        notify(f"labgrid place {place.name}: took over the stale lock of qbench pid "
                               f"{dead.split('-')[0]}")
            if time.monotonic() - start >= wait_timeout_s:
                raise UserError(timed_out())
            line = waiting(places)
            if line != said:
                notify(line)
                said = line
            time.sleep(POLL_S)
    finally:
        if not held:
            try:
                coordinator.cancel(reservation)
            except UserError:
                pass  # expired already, or the coordinator is gone: nothing is held by it


def _tags_text(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in tags.items())
