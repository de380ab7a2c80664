"""What a board needs for a job: the checks of ``qbench devices check``, and the lab's health check.

Each check is a line with a status (ok, warn, fail). A device is healthy when none fails: reachable
and authenticated, Python and the runtime's packages present, the configured providers there, memory
and disk free, the CPU below its temperature limit. A lab board is checked before every job
(:mod:`qbench.host.lab.quarantine` counts the failures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import UserError
from ..inventory import Device
from ..transport.bundle import current_bundle
from ..transport.probe import ProbeReport, probe_local
from ..transport.ssh import SSHTransport

LOW_DISK_BYTES = 100 << 20  # warn below
MIN_DISK_BYTES = 20 << 20  # fail below: the agent bundle and a model cache need room
MIN_MEMORY_BYTES = 64 << 20  # fail below: a worker with a runtime needs more
MAX_CPU_TEMP_C = 85.0  # fail above: a board throttling for heat gives timings that mean nothing
COPY_METHODS = {
    "sftp": "sftp",
    "exec": "exec (no SFTP subsystem: cat over an exec channel, checked by SHA-256 on the board)",
}


@dataclass
class Check:
    """One line of ``devices check``: ``status`` is ok, warn or fail."""

    name: str
    status: str
    detail: str


def failures(checks: list[Check]) -> list[str]:
    """``name: detail`` of every failed check (empty: healthy)."""
    return [f"{check.name}: {check.detail}" for check in checks if check.status == "fail"]


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
        checks.append(Check("file copy", "ok", COPY_METHODS[transport.copy_method()]))
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
    memory = report.mem_available_bytes
    short = memory is not None and memory < MIN_MEMORY_BYTES
    checks.append(Check("memory available", "fail" if short else "ok",
                        _size(memory) + (f" (below {_size(MIN_MEMORY_BYTES)})" if short else "")))
    if dev.transport == "ssh":
        free = report.disk_free_bytes
        status = "fail" if free < MIN_DISK_BYTES else "warn" if free < LOW_DISK_BYTES else "ok"
        checks.append(Check("disk free", status, f"{_size(free)} in {report.workdir}"))
    temp = _optional("cpu temperature", report.cpu_temp_c, lambda t: f"{t:.1f} °C")
    if report.cpu_temp_c is not None and report.cpu_temp_c > MAX_CPU_TEMP_C:
        temp = Check("cpu temperature", "fail", f"{report.cpu_temp_c:.1f} °C (above {MAX_CPU_TEMP_C:g} °C)")
    checks.append(temp)
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

