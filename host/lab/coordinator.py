"""A labgrid coordinator, through labgrid's own client API (``labgrid.remote.client``).

labgrid's :class:`~labgrid.remote.client.ClientSession` is asyncio code bound to one event loop.
qbench calls it from several threads (a run starts its agent on a thread of its own, `compare`
runs a thread per machine, stops happen in the background), so one :class:`Coordinator` per
address owns a thread that runs the session's loop, and every call is handed to that loop.
Places and resources are the session's own copies, kept current by the coordinator's stream;
each call first syncs with the coordinator, so it sees every change made before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Optional

from qbench.host.errors import UserError

ENV_COORDINATOR = "LG_COORDINATOR"
_CALL_TIMEOUT_S = 30.0
_sessions: dict[str, "Coordinator"] = {}
_sessions_lock = threading.Lock()


@dataclass(frozen=True)
class PlaceInfo:
    """What qbench reads of a labgrid place."""

    name: str
    tags: dict[str, str]
    comment: str
    acquired: Optional[str]  # "host/user" of the lock holder
    reservation: Optional[str]
    matches: tuple[str, ...]


@dataclass(frozen=True)
class ReservationInfo:
    token: str
    owner: str
    state: str  # waiting | allocated | acquired | expired | invalid
    prio: float
    filters: dict[str, str]
    place: Optional[str]


class _WithoutLabgridRootLogs(logging.Filter):
    """labgrid's client logs a lost coordinator on the root logger; our UserError says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}labgrid{os.sep}" not in record.pathname


_ROOT_FILTER = _WithoutLabgridRootLogs()


def connect(address: str) -> "Coordinator":
    """The (shared, per process) connection to the coordinator at ``address`` (HOST:PORT)."""
    logging.getLogger().addFilter(_ROOT_FILTER)  # a filter of the root logger sees only its own records
    with _sessions_lock:
        found = _sessions.get(address)
        if found is None or not found.alive():
            found = _sessions[address] = Coordinator(address)
        return found


class Coordinator:
    """One labgrid client session, its loop on a thread of its own; every failure is a UserError line."""

    def __init__(self, address: str):
        self.address = address
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.session: Any = None
        threading.Thread(target=self._serve, name="qbench-labgrid", daemon=True).start()
        self._ready.wait(_CALL_TIMEOUT_S)
        if self._error is not None or self.session is None:
            raise UserError(f"labgrid coordinator {address}: not reachable ({self._error or 'no answer'})")

    def _serve(self) -> None:
        from labgrid.remote.client import start_session

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self.session = start_session(self.address, loop=loop)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def alive(self) -> bool:
        return self.session is not None and not self.session.stopping.is_set()

    @property
    def holder(self) -> str:
        """How labgrid names this process as a lock holder: ``host/user``."""
        return f"{self.session.gethostname()}/{self.session.getuser()}"

    def _call(self, coro_factory, what: str):
        if not self.alive():
            raise UserError(f"labgrid coordinator {self.address}: connection lost (restarted?) while {what}")

        async def run():
            if not await self.session.sync_with_coordinator():
                raise ConnectionError("the coordinator closed the stream")
            result = await coro_factory()
            await self.session.sync_with_coordinator()
            return result

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(_CALL_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise UserError(f"labgrid coordinator {self.address}: no answer within {_CALL_TIMEOUT_S:g} s "
                            f"while {what}") from None
        except UserError:
            raise
        except Exception as exc:  # grpc.aio.AioRpcError and labgrid's errors: one line
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            raise UserError(f"labgrid coordinator {self.address}: {what} failed: {detail}") from exc

    def _rpc(self, method: str, what: str, **fields):
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2

        request = getattr(pb2, f"{method}Request")(**fields)
        return self._call(lambda: getattr(self.session.stub, method)(request), what)

    # ---- reading -----------------------------------------------------------------

    def places(self) -> dict[str, PlaceInfo]:
        async def nothing():
            return None

        self._call(nothing, "reading the places")
        return {name: _place_info(place) for name, place in sorted(self.session.places.items())}

    def place(self, name: str) -> PlaceInfo:
        places = self.places()
        if name not in places:
            raise UserError(f"labgrid place {name!r} does not exist on {self.address}; "
                            f"places: {', '.join(places) or 'none'}")
        return places[name]

    def network_service(self, name: str) -> dict[str, Any]:
        """The parameters (address, username, port, password) of the place's NetworkService resource."""
        place = self.session.places.get(name)
        if place is None:
            raise UserError(f"labgrid place {name!r} does not exist on {self.address}")
        for exporter, groups in self.session.resources.items():
            for group, resources in groups.items():
                for resource_name, resource in resources.items():
                    if resource.cls == "NetworkService" and place.hasmatch((exporter, group, resource.cls,
                                                                            resource_name)):
                        if not resource.avail:
                            raise UserError(f"labgrid place {name!r}: its NetworkService "
                                            f"{exporter}/{group}/{resource_name} is not available (exporter gone?)")
                        return dict(resource.params)
        raise UserError(f"labgrid place {name!r} matches no NetworkService resource (is its exporter running? "
                        f"add one with labgrid-client -p {name} add-match EXPORTER/GROUP/NetworkService)")

    def reservations(self) -> list[ReservationInfo]:
        from labgrid.remote.common import Reservation

        reply = self._rpc("GetReservations", "reading the reservations")
        found = [Reservation.from_pb2(r) for r in reply.reservations]
        return [_reservation_info(r) for r in sorted(found, key=lambda r: (-r.prio, r.created))]

    # ---- changing ----------------------------------------------------------------

    def acquire(self, name: str) -> None:
        self._rpc("AcquirePlace", f"acquiring place {name}", placename=name)

    def release(self, name: str) -> None:
        self._rpc("ReleasePlace", f"releasing place {name}", placename=name)

    def set_tags(self, name: str, tags: dict[str, str]) -> None:
        """Set (or, with an empty value, remove) tags of a place; the others stay."""
        self._rpc("SetPlaceTags", f"tagging place {name}", placename=name, tags=tags)

    def set_comment(self, name: str, comment: str) -> None:
        self._rpc("SetPlaceComment", f"commenting place {name}", placename=name, comment=comment)

    def reserve(self, filters: dict[str, str], prio: float) -> ReservationInfo:
        from labgrid.remote.common import Reservation
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2

        groups = {"main": pb2.Reservation.Filter(filter=filters)}
        reply = self._rpc("CreateReservation", "reserving a place", filters=groups, prio=prio)
        return _reservation_info(Reservation.from_pb2(reply.reservation))

    def poll(self, token: str) -> ReservationInfo:
        """The reservation's state; polling also keeps it from expiring (60 s after the last poll)."""
        from labgrid.remote.common import Reservation

        reply = self._rpc("PollReservation", "polling a reservation", token=token)
        return _reservation_info(Reservation.from_pb2(reply.reservation))

    def cancel(self, token: str) -> None:
        self._rpc("CancelReservation", "cancelling a reservation", token=token)


def coordinator_address(configured: Optional[str]) -> Optional[str]:
    """devices.yaml's ``labgrid.coordinator``, else ``$LG_COORDINATOR``, else None."""
    return configured or os.environ.get(ENV_COORDINATOR) or None


def _place_info(place) -> PlaceInfo:
    return PlaceInfo(name=place.name, tags=dict(place.tags), comment=place.comment or "",
                     acquired=place.acquired or None, reservation=place.reservation or None,
                     matches=tuple(str(m) for m in place.matches))


def _reservation_info(res) -> ReservationInfo:
    place = next(iter(res.allocations.get("main") or []), None)
    return ReservationInfo(token=res.token, owner=res.owner, state=res.state.name, prio=res.prio,
                           filters=dict(res.filters.get("main") or {}), place=place)
