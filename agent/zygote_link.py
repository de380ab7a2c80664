"""The agent's link to its zygotes: JSON lines (with fds) over a socketpair, and killing a worker.

Both sides import this module; it needs only the standard library, so that the agent can start
its zygotes before importing numpy (see agent/__main__.py). The messages are described in
:mod:`.zygote`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import time


def kill_group(pid: int) -> None:
    """SIGKILL a worker's process group (the worker alone if it has not reached ``setsid`` yet)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Lines:
    """JSON lines (and the fds sent with them) read from a stream socket, with a deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def read(self, deadline: float | None) -> dict | None:
        """The next line; None at EOF. Raises TimeoutError at ``deadline`` (monotonic; None: wait)."""
        while b"\n" not in self.buffer:
            if deadline is not None:
                remaining = max(deadline - time.monotonic(), 0.0)
                if not select.select([self.sock], [], [], remaining)[0]:
                    raise TimeoutError
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 2)
            except ConnectionResetError:  # the peer exited with our request unread
                return None
            self.fds.extend(fds)
            if not data:
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode() + b"\n"], list(fds))
