"""Copying a file to a board that has no SFTP subsystem, over a plain exec channel.

dropbear (the SSH server of most Buildroot and Yocto images) and OpenSSH without a
``Subsystem sftp`` line refuse SFTP, but run commands. The bytes then travel as the stdin of
one remote shell command that writes them under a temporary name, checks their SHA-256 with
the board's own Python (coreutils' ``sha256sum`` is not on every image; the agent's Python is)
and renames the file into place, so a file with its final name is always whole.
"""

from __future__ import annotations

import hashlib
import shlex
import uuid
from typing import Callable

#: run_command(command, stdin) -> (exit status, stdout, stderr), as SSHTransport.run_command
RunCommand = Callable[..., tuple[int, str, str]]

SFTP = "sftp"
EXEC = "exec"

_HASH_SNIPPET = (
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "with open(sys.argv[1], 'rb') as f:\n"
    "    for block in iter(lambda: f.read(1 << 20), b''):\n"
    "        h.update(block)\n"
    "print(h.hexdigest())\n"
)
_MISMATCH_STATUS = 3
_WRITE_STATUS = 4


class ExecCopyError(Exception):
    """The copy failed; ``disk_full`` when the board ran out of space."""

    def __init__(self, message: str, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def copy_command(python: str, directory: str, path: str, sha256: str) -> str:
    """The remote shell command that writes stdin to ``path`` (via a ``.part`` file) if its hash is ``sha256``.

    Args:
        python: the board's Python, as a shell word (or words).
        directory: created (mode 700) if missing.
        path: the final file name.
        sha256: the expected hex digest of stdin.
    """
    part = shlex.quote(f"{path}.{uuid.uuid4().hex[:8]}.part")
    final, folder = shlex.quote(path), shlex.quote(directory)
    return (
        f"umask 077; mkdir -p {folder} || exit {_WRITE_STATUS}; "
        f"cat > {part} || {{ rm -f {part}; exit {_WRITE_STATUS}; }}; "
        f"got=$({python} -c {shlex.quote(_HASH_SNIPPET)} {part}) || {{ rm -f {part}; exit {_WRITE_STATUS}; }}; "
        f"if [ \"$got\" != {sha256} ]; then rm -f {part}; echo \"sha256 $got\" >&2; exit {_MISMATCH_STATUS}; fi; "
        f"mv -f {part} {final} || {{ rm -f {part}; exit {_WRITE_STATUS}; }}"
    )


def exec_copy(run_command: RunCommand, python: str, data: bytes, directory: str, path: str) -> None:
    """Write ``data`` to ``path`` on the board through ``run_command``; check it there by SHA-256.

    Raises:
        ExecCopyError: the write, the check or the rename failed (``disk_full`` on ENOSPC).
    """
    digest = hashlib.sha256(data).hexdigest()
    rc, _, err = run_command(copy_command(python, directory, path, digest), stdin=data)
    if rc == 0:
        return
    detail = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
    if rc == _MISMATCH_STATUS:
        raise ExecCopyError(f"the copy on the board has a different SHA-256 ({detail}, expected {digest})")
    raise ExecCopyError(detail, disk_full="No space left" in err)
