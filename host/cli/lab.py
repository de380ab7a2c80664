"""``qbench lab``: the boards of a labgrid coordinator as qbench sees them, and their admin commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..inventory import Device, Inventory, lab_device, load_inventory
from ..lab import quarantine
from ..lab.coordinator import Coordinator, connect, coordinator_address
from ..lab.lease import FAILS_TAG, HEALTH_TAG, LEASE_TAG, give_back, holder_text, qbench_reservation
from ..lab.options import LabOptions
from ..lab.transport import LabTransport
from .main import app

lab_app = typer.Typer(help="Boards shared through a labgrid coordinator: status, release, unquarantine.",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")

DevicesOption = typer.Option(None, "--devices", envvar="QBENCH_DEVICES", help="inventory file (default ./devices.yaml)")
CoordinatorOption = typer.Option(None, "--coordinator", help="HOST:PORT (default: devices.yaml's labgrid.coordinator, "
                                                             "or $LG_COORDINATOR)")
_QBENCH_TAGS = (LEASE_TAG, HEALTH_TAG, FAILS_TAG)


def _coordinator(devices: Optional[Path], address: Optional[str]) -> Coordinator:
    found = address or coordinator_address(load_inventory(devices).lab.coordinator)
    if not found:
        raise UserError("no labgrid coordinator: pass --coordinator HOST:PORT, set 'labgrid: {coordinator: ...}' "
                        "in devices.yaml, or $LG_COORDINATOR")
    return connect(found)


@lab_app.command("status")
def status(devices: Optional[Path] = DevicesOption, coordinator: Optional[str] = CoordinatorOption) -> None:
    """Every place: its tags, who holds it, its health and quarantine reason; then the waiting reservations."""
    lab = _coordinator(devices, coordinator)
    table = Table(title=f"labgrid places ({lab.address})")
    for column in ("place", "tags", "locked by", "health", "reason", "reservation"):
        table.add_column(column, overflow="fold")
    for place in lab.places().values():
        tags = ", ".join(f"{k}={v}" for k, v in sorted(place.tags.items()) if k not in _QBENCH_TAGS)
        health = place.tags.get(HEALTH_TAG, "unchecked")
        fails = place.tags.get(FAILS_TAG)
        if health == "bad":
            health = "[red]QUARANTINED[/]"
        elif fails:
            health += f" ({fails} failed)"
        reason = place.comment if place.tags.get(HEALTH_TAG) == "bad" else ""
        table.add_row(place.name, tags or "-", holder_text(place, lab) if place.acquired else "-", health,
                      reason or "-", place.reservation or "-")
    console = Console()
    console.print(table)
    waiting = [r for r in lab.reservations() if r.state in ("waiting", "allocated")]
    if waiting:
        res = Table(title="reservations")
        for column in ("token", "owner", "state", "priority", "filter", "place"):
            res.add_column(column)
        for r in waiting:
            res.add_row(r.token, r.owner, r.state, f"{r.prio:g}", ",".join(f"{k}={v}" for k, v in r.filters.items()),
                        r.place or "-")
        console.print(res)
    else:
        console.print("no reservations waiting")


@lab_app.command("check")
def check(places: list[str] = typer.Argument(..., help="places to check"), devices: Optional[Path] = DevicesOption,
          wait_timeout: float = typer.Option(60.0, "--wait-timeout", min=0.0, help="seconds to wait for a locked place"),
          accept_new_host: bool = typer.Option(False, "--accept-new-host", help="trust an unknown SSH host key")) -> None:
    """Run the health check a job runs on each PLACE now (locking it meanwhile) and count the result; exit 1 on a failure."""
    inventory = load_inventory(devices)
    options = LabOptions(wait_timeout_s=wait_timeout, quarantine_after=inventory.lab.quarantine_after)
    failed = []
    for place in places:
        transport = LabTransport(_place_device(inventory, place), options, accept_new_host=accept_new_host)
        try:
            board = transport.lease_board()
            Console().print(f"{place}: healthy ({board.user}@{board.host}:{board.port})")
        except UserError as exc:
            Console().print(f"{place}: {exc}")
            failed.append(place)
        finally:
            transport.stop()
    if failed:
        raise typer.Exit(1)


def _place_device(inventory: Inventory, place: str) -> Device:
    """The devices.yaml device of ``place``, else one made of ``labgrid.defaults``."""
    named = next((d for d in inventory.devices.values() if d.place == place), None)
    return named if named is not None else lab_device({"name": place, "place": place}, inventory.lab)


@lab_app.command("release")
def release(place: str = typer.Argument(..., help="the place to release"), devices: Optional[Path] = DevicesOption,
            coordinator: Optional[str] = CoordinatorOption) -> None:
    """Break the lock on PLACE, whoever holds it (a qbench killed outright, a forgotten labgrid-client lock)."""
    lab = _coordinator(devices, coordinator)
    info = lab.place(place)
    if not info.acquired:
        Console().print(f"{place}: not locked")
        return
    holder = holder_text(info, lab)
    give_back(lab, place, qbench_reservation(info, lab))  # a qbench lease's reservation goes with its lock
    Console().print(f"{place}: released (was locked by {holder})")


@lab_app.command("unquarantine")
def unquarantine(place: str = typer.Argument(..., help="the place to put back into service"),
                 devices: Optional[Path] = DevicesOption, coordinator: Optional[str] = CoordinatorOption) -> None:
    """Put a quarantined PLACE back into service (its failure count starts again from zero)."""
    lab = _coordinator(devices, coordinator)
    was = quarantine.unquarantine(lab, place)
    Console().print(f"{place}: {'back in service' if was else 'was not quarantined; failure count cleared'}")
