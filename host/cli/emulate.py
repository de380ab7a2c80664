"""``qbench emulate``: build an emulated board on this machine and add it to devices.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from ..emulate import BoardSpec, ensure_arm64, wheels_with
from ..emulate_openvino import ensure_openvino
from ..errors import UserError
from ..inventory import resolve_path
from ..inventory_edit import add_device
from .main import app

emulate_app = typer.Typer(help="Emulated boards: built once on this machine, then used like any device.",
                          no_args_is_help=True)
app.add_typer(emulate_app, name="emulate")

RUNTIMES = ("onnxruntime", "tflite")


@emulate_app.command("arm64")
def arm64(
    name: str = typer.Option("pi4-emu", "--name", help="the device's name in devices.yaml"),
    devices: Optional[Path] = typer.Option(None, "--devices", envvar="QBENCH_DEVICES",
                                           help="inventory file to add it to (default ./devices.yaml)"),
    root: Optional[Path] = typer.Option(None, "--root", help="the board's folder (default: in the user cache, "
                                        "or $QBENCH_EMULATE_CACHE/arm64)"),
    runtime: str = typer.Option("onnxruntime", "--runtime", help="|".join(RUNTIMES)),
    package: List[str] = typer.Option([], "--package", help="pip requirement replacing the default for its "
                                      "package, e.g. onnxruntime==1.19.2 (repeat)"),
    rebuild: bool = typer.Option(False, "--rebuild", help="build again even if the cached board is current"),
) -> None:
    """Build (once, cached) an arm64 board run by qemu-aarch64-static and add it as a local device.

    The board has Debian's aarch64 CPython with aarch64 wheels of numpy, pyzmq, onnxruntime and
    ai-edge-litert, by default at the versions this machine runs. It runs the real ARM kernels;
    its timings are emulation timings and reports say so.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    err = _console()
    board = ensure_arm64(root, BoardSpec(wheels=wheels_with(package)), rebuild, log=err.print)
    entry = board.device_entry()
    if runtime != "onnxruntime":
        entry["runtime"] = runtime
    _register(err, name, devices, entry, f"arm64 board: {board.root}\n  Python {board.python_version} (aarch64), "
              f"{_versions(board.versions)}", f"qbench run --device {name} MODEL.onnx  (timings are emulation timings)")


@emulate_app.command("openvino")
def openvino(
    name: str = typer.Option("ov", "--name", help="the device's name in devices.yaml"),
    devices: Optional[Path] = typer.Option(None, "--devices", envvar="QBENCH_DEVICES",
                                           help="inventory file to add it to (default ./devices.yaml)"),
    root: Optional[Path] = typer.Option(None, "--root", help="the environment's folder (default: in the user "
                                        "cache, or $QBENCH_EMULATE_CACHE/openvino)"),
    rebuild: bool = typer.Option(False, "--rebuild", help="create the environment again even if it is there"),
) -> None:
    """Create (once) a venv with onnxruntime-openvino and add it as a local device using OpenVINO.

    onnxruntime-openvino installs the same `onnxruntime` module as the CPU build, so it lives in an
    environment of its own; the device runs this host's agent with that environment's Python.
    Compare it with the CPU provider: qbench compare MODEL.onnx --device local --device NAME.
    """
    err = _console()
    env = ensure_openvino(root, rebuild=rebuild, log=err.print)
    _register(err, name, devices, env.device_entry(), f"OpenVINO environment: {env.root}\n  Python "
              f"{env.python_version}, {_versions(env.versions)}; providers: {', '.join(env.providers)}",
              f"qbench compare MODEL.onnx --device local --device {name}")


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{dist} {version}" for dist, version in versions.items())


def _register(err: Console, name: str, devices: Optional[Path], entry: dict, built: str, try_line: str) -> None:
    """Add (or update) device ``name`` in the inventory, then say what was built and how to use it."""
    path, _ = resolve_path(devices)
    replaced = add_device(path, name, entry)
    err.print(built)
    err.print(f"{'updated' if replaced else 'added'} device {name!r} in {path}; try: {try_line}")
