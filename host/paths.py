"""Output folders checked before a run starts: a bad ``--out`` is one line, not a traceback after the timing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import UserError


def check_output_dir(path: Path, option: str) -> None:
    """Make sure ``path`` is, or can be made, a folder qbench can write files in (creating it).

    Raises:
        UserError: naming ``option``, the path and what is wrong: an existing file, a path under a
            file, a folder that cannot be created or written (read-only, ``/proc``...).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is an existing file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # /proc and read-only mounts pass mkdir's checks, not this
            pass
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there: {exc.strerror or exc}") from None


