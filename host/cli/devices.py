"""``qbench devices`` (list, check) and ``qbench deploy``: the lab inventory and the agent on each board."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..inventory import Device, load_inventory
from ..transport.bundle import current_bundle
from ..transport.probe import ProbeReport, probe_local
from ..transport.ssh import SSHTransport
from .main import app

devices_app = typer.Typer(help="The devices of devices.yaml: list them, check them.", no_args_is_help=False)
app.add_typer(devices_app, name="devices")

DevicesOption = typer.Option(None, "--devices", envvar="QBENCH_DEVICES", help="inventory file (default ./devices.yaml)")
AcceptOption = typer.Option(False, "--accept-new-host", help="trust an SSH host key not yet in known_hosts")

_LOW_DISK_BYTES = 100 << 20
_MARKS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@dataclass
class Check:
    """One line of ``devices check``: ``status`` is ok, warn or fail."""

    name: str
    status: str
    detail: str


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
        checks = check_device(dev, accept_new_host)
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
    dev = load_inventory(devices).get(name)
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


def check_device(dev: Device, accept_new_host: bool) -> list[Check]:
    """Everything ``devices check`` reports about one device; failures become ``fail`` lines."""
    checks: list[Check] = []
    try:
        if dev.transport == "ssh":
            report = _probe_ssh(dev, accept_new_host, checks)
        else:
            report = probe_local(dev.local_python_cmd(), dev.name, dev.workdir, dev.runtime)
            checks.append(Check("python", "ok", f"{report.python} ({report.executable})"))
    except UserError as exc:
        checks.append(Check("error", "fail", str(exc)))
        return checks
    checks += _report_checks(dev, report)
    return checks


def _probe_ssh(dev: Device, accept_new_host: bool, checks: list[Check]) -> ProbeReport:
    transport = SSHTransport(dev, accept_new_host=accept_new_host)
    try:
        transport.connect()
        checks.append(Check("reachable, auth", "ok", transport.label))
        version = transport.python_version()
        report = transport.probe()
        checks.append(Check("python", "ok", f"{version} ({report.executable})"))
    finally:
        transport.stop()
    bundle = current_bundle()
    if report.bundles.get(bundle.name) == len(bundle.data):
        checks.append(Check("agent", "ok", f"current ({bundle.name})"))
    else:
        others = ", ".join(report.bundles) or "none"
        checks.append(Check("agent", "warn", f"not current (device has: {others}); `qbench deploy {dev.name}` or run"))
    return report


def _report_checks(dev: Device, report: ProbeReport) -> list[Check]:
    checks = [Check("system", "ok", f"{report.machine}, {report.os}, {report.cpu_count} CPUs")]
    python = dev.remote_python() if dev.transport == "ssh" else " ".join(dev.local_python_cmd())
    for module, info in report.modules.items():
        if info.get("error"):
            checks.append(Check(module, "fail", info["error"]))
        else:
            checks.append(Check(module, "ok", str(info.get("version") or "installed")))
    missing = report.missing(dev.runtime)
    if missing:
        checks.append(Check("fix", "fail", f"{python} -m pip install --user {' '.join(missing)}"))
    available = report.modules.get("onnxruntime", {}).get("providers")
    if available is not None:
        absent = [p for p in dev.provider_names if p not in available]
        status = "fail" if absent else "ok"
        detail = ", ".join(available) + (f"; configured but absent: {', '.join(absent)}" if absent else "")
        checks.append(Check("providers", status, detail))
    checks.append(Check("memory available", "ok", _size(report.mem_available_bytes)))
    if dev.transport == "ssh":
        low = report.disk_free_bytes < _LOW_DISK_BYTES
        detail = f"{_size(report.disk_free_bytes)} in {report.workdir}"
        checks.append(Check("disk free", "warn" if low else "ok", detail))
    checks.append(_optional("cpu temperature", report.cpu_temp_c, lambda t: f"{t:.1f} °C"))
    governor = _optional("cpu governor", report.governor, str)
    if report.governor not in (None, "performance"):
        governor = Check("cpu governor", "warn", f"{report.governor} (timings vary; 'performance' is steadier)")
    checks.append(governor)
    return checks


def _optional(name: str, value, fmt: Callable) -> Check:
    return Check(name, "ok", fmt(value) if value is not None else "not readable")


def _size(value: Optional[int]) -> str:
    if value is None:
        return "unknown"
    return f"{value / (1 << 30):.1f} GiB" if value >= 1 << 30 else f"{value / (1 << 20):.1f} MiB"

