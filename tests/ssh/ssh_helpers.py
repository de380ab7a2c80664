"""Helpers shared by the SSH tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path


def agent_pids(workdir: Path | str) -> list[int]:
    """Pids of agent processes running a bundle from ``workdir``."""
    result = subprocess.run(["pgrep", "-f", f"{workdir}/qbench-agent"], capture_output=True, text=True, timeout=10)
    return [int(pid) for pid in result.stdout.split()]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def listening_addresses(pid: int) -> set[str]:
    """IPv4 addresses that ``pid`` listens on, read in ITS network namespace (/proc/PID/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A = LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(local.split(":")[0], 16))))
    return found
