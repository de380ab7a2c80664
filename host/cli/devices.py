"""``qbench devices`` (list, check) and ``qbench deploy``: the lab inventory and the agent on each board."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..inventory import Device, load_inventory
from ..lab.health import Check, check_device
from ..transport.bundle import current_bundle
from ..transport.ssh import SSHTransport
from .main import app

devices_app = typer.Typer(help="The devices of devices.yaml: list them, check them.", no_args_is_help=False)
app.add_typer(devices_app, name="devices")

DevicesOption = typer.Option(None, "--devices", envvar="QBENCH_DEVICES", help="inventory file (default ./devices.yaml)")
AcceptOption = typer.Option(False, "--accept-new-host", help="trust an SSH host key not yet in known_hosts")

_MARKS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@devices_app.callback(invoke_without_command=True)
def list_devices(ctx: typer.Context, devices: Optional[Path] = DevicesOption) -> None:
    """List the inventory (the `local` device is always there)."""
    if ctx.invoked_subcommand is not None:
        return
    inventory = load_inventory(devices)
    table = Table(title=f"devices ({inventory.source or 'no devices.yaml: built-in local only'})")
    for column in ("name", "transport", "address", "python", "runtime", "providers", "tags"):
        table.add_column(column)
    for name in inventory.names():
        dev = inventory.get(name)
        address = f"{dev.user + '@' if dev.user else ''}{dev.host}:{dev.port}" if dev.transport == "ssh" else "-"
        if dev.in_lab:
            address = f"labgrid place {dev.place}" if dev.place else "labgrid tags " + ",".join(
                f"{k}={v}" for k, v in dev.select.items())
        python = dev.remote_python() if dev.transport == "ssh" else " ".join(dev.local_python_cmd())
        transport = dev.transport + (f" ({dev.emulation})" if dev.emulation else "")
        table.add_row(name, transport, address, python, dev.runtime, ", ".join(dev.provider_names), ", ".join(dev.tags))
    Console().print(table)


@devices_app.command("check")
def check(
    names: Optional[List[str]] = typer.Argument(None, help="devices to check (default: all)"),
    devices: Optional[Path] = DevicesOption,
    accept_new_host: bool = AcceptOption,
) -> None:
    """Connect to each device and report what the agent needs; exit 1 if any device fails."""
    inventory = load_inventory(devices)
    selected = [inventory.get(name) for name in (names or inventory.names())]
    console = Console()
    failed = []
    for dev in selected:
        try:
            checks = (check_device(_board(dev), accept_new_host) if not dev.select else
                      [Check("labgrid", "warn", "a selection of any free place with tags "
                             f"{dev.select}: check its places by name (qbench lab check PLACE)")])
        except UserError as exc:
            checks = [Check("error", "fail", str(exc))]
        table = Table(title=f"{dev.name} ({dev.transport})", show_header=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for item in checks:
            table.add_row(item.name, _MARKS[item.status], item.detail)
        console.print(table)
        if any(item.status == "fail" for item in checks):
            failed.append(dev.name)
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/]")
        raise typer.Exit(1)


@app.command("deploy")
def deploy(
    name: str = typer.Argument(..., help="device name from devices.yaml"),
    devices: Optional[Path] = DevicesOption,
    accept_new_host: bool = AcceptOption,
) -> None:
    """Push the agent bundle to a device (only if its copy is missing or stale)."""
    dev = _board(load_inventory(devices).get(name))
    if dev.transport != "ssh":
        Console().print(f"{name}: nothing to deploy, a local device runs the agent from this installation")
        return
    transport = SSHTransport(dev, accept_new_host=accept_new_host)
    try:
        result = transport.deploy()
    finally:
        transport.stop()
    size_kib = len(current_bundle().data) // 1024
    verb = f"uploaded ({size_kib} KiB)" if result.uploaded else "already current, nothing uploaded"
    Console().print(f"{name}: agent {result.path} {verb}")


def _board(dev: Device) -> Device:
    """A place-backed device at its place's current NetworkService address (read, not locked)."""
    if not dev.in_lab:
        return dev
    if not dev.place:
        raise UserError(f"{dev.name} selects any place with tags {dev.select}: deploy to its places by name")
    from ..lab.coordinator import connect, coordinator_address
    from ..lab.transport import board_device

    address = coordinator_address(dev.coordinator)
    if not address:
        raise UserError(f"device {dev.name!r} is a labgrid place but no coordinator is known (labgrid.coordinator "
                        "in devices.yaml, or $LG_COORDINATOR)")
    coordinator = connect(address)
    coordinator.place(dev.place)  # names the known places if this one does not exist
    return board_device(dev, coordinator, dev.place)
