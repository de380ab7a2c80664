"""The agent bundle: one zipapp of ``qbench.agent`` + ``qbench.protocols`` for the device.

The bundle is built from the installed package's files (never by importing the agent),
with fixed timestamps and sorted entries, so the same sources always give the same
bytes and so the same name ``qbench-agent-<sha256[:16]>.pyz``. The device runs it as
``python qbench-agent-....pyz --bind ...``; nothing is installed there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

PREFIX = "qbench-agent-"
SUFFIX = ".pyz"

_MAIN = b'''"""qbench agent bundle entry point."""
import sys

from qbench.agent.__main__ import main

sys.exit(main())
'''
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class Bundle:
    """The built bundle: its bytes and content hash."""

    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.sha256[:16]}{SUFFIX}"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"cannot locate the installed package {package}")
    return Path(list(spec.submodule_search_locations)[0])


def _files(root: Path) -> list[Path]:
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and not _SKIP_DIRS.intersection(path.relative_to(root).parts)
        and path.suffix not in _SKIP_SUFFIXES
    ]


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def build_bundle() -> Bundle:
    """Build the bundle from the installed ``qbench.agent`` and ``qbench.protocols``."""
    entries: dict[str, bytes] = {"__main__.py": _MAIN, "qbench/__init__.py": b""}
    for package in ("qbench.agent", "qbench.protocols"):
        root = _package_dir(package)
        prefix = package.replace(".", "/")
        for path in _files(root):
            entries[f"{prefix}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for arcname in sorted(entries):
            _add(archive, arcname, entries[arcname])
    data = buffer.getvalue()
    return Bundle(data=data, sha256=hashlib.sha256(data).hexdigest())


@functools.lru_cache(maxsize=1)
def current_bundle() -> Bundle:
    """The bundle of this installation, built once per process."""
    return build_bundle()
