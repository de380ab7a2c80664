"""An OpenVINO device on this machine: a venv of its own with ``onnxruntime-openvino``.

``onnxruntime-openvino`` installs the same ``onnxruntime`` module as the CPU build, so the two
cannot share an environment. The device is a folder (a venv) built once:

- ``python -m venv ROOT`` from this host's Python, then ``pip install onnxruntime-openvino numpy
  pyzmq`` into it (the agent needs nothing else);
- ``ROOT/agent-src/qbench/{agent,protocols}``, links to this installation's agent sources, put on
  the venv's ``sys.path`` by a ``.pth`` file, so ``ROOT/bin/python -m qbench.agent`` runs this
  host's agent;
- a stamp recording what the smoke test found (ONNX Runtime version, providers).

The devices.yaml entry is a local device whose ``python`` is the venv's interpreter and whose
providers are ``OpenVINOExecutionProvider`` then ``CPUExecutionProvider`` (ONNX Runtime gives
OpenVINO what it can take and the CPU provider the rest).
"""

from __future__ import annotations

import dataclasses
import json
import os
import venv
from pathlib import Path
from typing import Callable, Optional

from .emulate import build_lock, link_agent_sources, run_step
from .errors import UserError

CACHE_ENV = "QBENCH_EMULATE_CACHE"
STAMP = ".qbench-openvino.json"
PROVIDER = "OpenVINOExecutionProvider"
PACKAGES = ("onnxruntime-openvino", "numpy", "pyzmq")
MIN_ORT = (1, 17)  # the oldest ONNX Runtime the agent supports

_SMOKE = """
import json, sys
import numpy, zmq, onnxruntime
print(json.dumps({"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
                  "pyzmq": zmq.__version__, "providers": onnxruntime.get_available_providers(),
                  "python": sys.version.split()[0]}))
"""

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class OpenVinoEnv:
    """A built environment: its folder and what the smoke test found."""

    root: Path
    versions: dict[str, str]
    providers: list[str]
    python_version: str

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def device_entry(self) -> dict:
        """The devices.yaml settings of a local device running the agent in this environment."""
        return {"transport": "local", "python": [str(self.python)],
                "providers": [PROVIDER, "CPUExecutionProvider"], "tags": ["x86_64", "openvino"]}


def default_root() -> Path:
    """``$QBENCH_EMULATE_CACHE/openvino``, else ``<user cache dir>/qbench/emulate/openvino``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "openvino"
    import platformdirs

    return Path(platformdirs.user_cache_dir("qbench")) / "emulate" / "openvino"


def ensure_openvino(root: Optional[Path] = None, packages: tuple[str, ...] = PACKAGES, rebuild: bool = False,
                    log: Log = lambda message: None) -> OpenVinoEnv:
    """The environment at ``root``, created (venv + pip) when missing or ``rebuild``; links refreshed.

    Raises:
        UserError: pip failed, or the smoke test found no OpenVINOExecutionProvider or too old an ONNX Runtime.
    """
    root = Path(root or default_root()).expanduser().absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root.with_name(root.name + ".lock")):
        found = None if rebuild else _read_stamp(root)
        if found is None:
            _build(root, packages, log)
        _link(root)
        if found is None:
            found = _smoke_test(root)
            (root / STAMP).write_text(json.dumps(dataclasses.asdict(found) | {"root": str(root)}, indent=1))
    return found


def _read_stamp(root: Path) -> Optional[OpenVinoEnv]:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not (root / "bin" / "python").exists():
        return None
    return OpenVinoEnv(root, stamp["versions"], stamp["providers"], stamp["python_version"])


def _build(root: Path, packages: tuple[str, ...], log: Log) -> None:
    log(f"creating a venv in {root}")
    venv.EnvBuilder(clear=True, with_pip=True, symlinks=True).create(root)
    log(f"installing {' '.join(packages)} (pip)")
    run_step([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *packages], "pip install into the OpenVINO environment")


def _link(root: Path) -> None:
    link_agent_sources(root / "agent-src")
    site = _site_packages(root)
    pth = site / "qbench-agent-src.pth"
    line = f"{root / 'agent-src'}\n"
    if not pth.exists() or pth.read_text() != line:
        pth.write_text(line)


def _site_packages(root: Path) -> Path:
    found = sorted((root / "lib").glob("python3*/site-packages"))
    if not found:
        raise UserError(f"{root} has no lib/python3*/site-packages: not a venv (rebuild it with --rebuild)")
    return found[0]


def _smoke_test(root: Path) -> OpenVinoEnv:
    out = run_step([str(root / "bin" / "python"), "-c", _SMOKE], "the smoke test of the OpenVINO environment", timeout=300)
    info = json.loads(out.strip().splitlines()[-1])
    if PROVIDER not in info["providers"]:
        raise UserError(f"{root}: onnxruntime {info['onnxruntime']} there has no {PROVIDER} "
                        f"(providers: {', '.join(info['providers'])})")
    version = tuple(int(part) for part in info["onnxruntime"].split(".")[:2])
    if version < MIN_ORT:
        raise UserError(f"{root}: onnxruntime {info['onnxruntime']} is older than the agent supports "
                        f"({'.'.join(map(str, MIN_ORT))})")
    versions = {name: info[name] for name in ("onnxruntime", "numpy", "pyzmq")}
    return OpenVinoEnv(root, versions, info["providers"], info["python"])
