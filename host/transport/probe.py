"""What a device has: the host side of ``device_probe.py`` (Python version, packages, disk, ...)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qbench.host.errors import UserError

MIN_PYTHON = (3, 10)  # the protocols package uses 3.10 syntax (X | None, zip strict)
#: prints the interpreter version even on a Python 2, so "too old" gets a clear message
VERSION_SNIPPET = "import sys; print('%d.%d.%d' % tuple(sys.version_info[:3]))"

#: import name -> pip name of what every agent needs
BASE_PACKAGES = {"numpy": "numpy", "zmq": "pyzmq"}
#: runtime name (devices.yaml) -> (import name, pip name)
RUNTIME_PACKAGES = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "tflite": ("ai_edge_litert", "ai-edge-litert"),
    "litert": ("ai_edge_litert", "ai-edge-litert"),
}


def required_packages(runtime: str) -> dict[str, str]:
    """Import name -> pip name of everything the agent needs for ``runtime``."""
    if runtime not in RUNTIME_PACKAGES:
        raise UserError(f"unknown runtime {runtime!r}; known: {', '.join(sorted(RUNTIME_PACKAGES))}")
    module, pip_name = RUNTIME_PACKAGES[runtime]
    return {**BASE_PACKAGES, module: pip_name}


def probe_source() -> str:
    """The source of the script the device's Python runs (read, never imported here)."""
    return (Path(__file__).with_name("device_probe.py")).read_text(encoding="utf-8")


def probe_argument(workdir: str, runtime: str) -> str:
    return json.dumps({"workdir": workdir, "modules": list(required_packages(runtime))})


def check_python_version(output: str, device_name: str, python: str) -> str:
    """The version printed by :data:`VERSION_SNIPPET`; a UserError if below :data:`MIN_PYTHON`."""
    text = output.strip()
    try:
        version = tuple(int(part) for part in text.split("."))
    except ValueError:
        raise UserError(f"{device_name}: {python!r} did not report a Python version (got {text[:80]!r})") from None
    if version[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        raise UserError(
            f"{device_name}: Python {text} at {python!r} is too old; the agent needs Python >= {need} "
            f"(set 'python:' in devices.yaml to a newer interpreter)"
        )
    return text


def pip_command(python: str, pip_names: list[str]) -> str:
    return f"{python} -m pip install --user {' '.join(pip_names)}"


@dataclass
class ProbeReport:
    """What ``device_probe.py`` printed."""

    python: str
    executable: str
    machine: str
    system: str
    os: str
    cpu_count: Optional[int]
    workdir: str
    disk_free_bytes: int
    mem_available_bytes: Optional[int]
    cpu_temp_c: Optional[float]
    governor: Optional[str]
    bundles: dict[str, int]
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str, device_name: str) -> "ProbeReport":
        try:
            data = json.loads(output.strip().splitlines()[-1])
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (IndexError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{device_name}: the device probe printed something unexpected: {output[:200]!r}") from exc

    def missing(self, runtime: str) -> list[str]:
        """Pip names of the required packages that do not import on the device."""
        return [
            pip_name
            for module, pip_name in required_packages(runtime).items()
            if self.modules.get(module, {}).get("error") or module not in self.modules
        ]

    def require_packages(self, device_name: str, python: str, runtime: str) -> None:
        """A UserError with the exact pip command when a package the agent needs is missing."""
        missing = self.missing(runtime)
        if missing:
            raise UserError(
                f"{device_name}: {', '.join(missing)} missing on the device; "
                f"install with: {pip_command(python, missing)}"
            )


def probe_local(python_cmd: list[str], name: str, workdir: str, runtime: str, timeout_s: float = 120.0) -> ProbeReport:
    """Run the probe with a local interpreter command (e.g. an emulator prefix plus an arm64 Python)."""
    shown = " ".join(python_cmd)

    def run(args: list[str], stdin: str = "") -> str:
        try:
            done = subprocess.run(
                [*python_cmd, *args], input=stdin, capture_output=True, text=True, timeout=timeout_s
            )
        except FileNotFoundError:
            raise UserError(f"{name}: no Python at {shown!r}") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{name}: {shown!r} did not answer within {timeout_s:g} s") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no error output"]
            raise UserError(f"{name}: {shown!r} failed (exit {done.returncode}): {lines[-1]}")
        return done.stdout

    check_python_version(run(["-c", VERSION_SNIPPET]), name, shown)
    return ProbeReport.parse(run(["-", probe_argument(workdir, runtime)], probe_source()), name)
