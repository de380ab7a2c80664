"""Local port forwarding through an SSH connection (``ssh -L`` in-process).

A listener on 127.0.0.1 accepts connections (ZeroMQ's, here) and carries each one
through a paramiko ``direct-tcpip`` channel to a port on the device's loopback, so
nothing on the device listens beyond its own loopback.
"""

from __future__ import annotations

import logging
import select
import socket
import threading

import paramiko

log = logging.getLogger(__name__)

_POLL_S = 0.25
_CHUNK = 65536


class Forwarder:
    """Forwards ``127.0.0.1:<local_port>`` to ``127.0.0.1:<remote_port>`` on the SSH server.

    Args:
        transport: an authenticated paramiko transport.
        remote_port: the port on the device's loopback.
        max_connections: connections beyond this are refused (ZeroMQ uses one at a time).
        channel_timeout_s: bound on opening a channel and on one blocked send.
    """

    def __init__(
        self, transport: paramiko.Transport, remote_port: int, max_connections: int = 8, channel_timeout_s: float = 30.0
    ):
        self._transport = transport
        self._remote_port = remote_port
        self._max = max_connections
        self._timeout = channel_timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self.last_error: str | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(self._max)
        self._listener.settimeout(_POLL_S)
        self.local_port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="qbench-ssh-forward", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._pumps = [t for t in self._pumps if t.is_alive()]
                full = len(self._pumps) >= self._max
            if full:
                conn.close()
                continue
            try:
                chan = self._transport.open_channel(
                    "direct-tcpip", ("127.0.0.1", self._remote_port), peer, timeout=self._timeout
                )
            except (paramiko.SSHException, OSError, EOFError) as exc:
                self.last_error = f"cannot open a forwarding channel: {exc or type(exc).__name__}"
                log.debug(self.last_error)
                conn.close()
                continue
            chan.settimeout(self._timeout)
            pump = threading.Thread(target=self._pump, args=(conn, chan), name="qbench-ssh-pump", daemon=True)
            with self._lock:
                self._sockets.add(conn)
                self._pumps.append(pump)
            pump.start()

    def _pump(self, conn: socket.socket, chan: paramiko.Channel) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([conn, chan], [], [], _POLL_S)
                if conn in ready:
                    data = conn.recv(_CHUNK)
                    if not data:
                        return
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(_CHUNK)
                    if not data:
                        return
                    conn.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.last_error = f"forwarded connection broke: {exc or type(exc).__name__}"
            log.debug(self.last_error)
        finally:
            chan.close()
            conn.close()
            with self._lock:
                self._sockets.discard(conn)

    def stop(self, join_timeout_s: float = 2.0) -> None:
        """Close the listener and every forwarded connection; safe to call twice."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets, pumps = list(self._sockets), list(self._pumps)
        for sock in sockets:
            # Wakes a pump blocked in select or sendall on this socket.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in [self._acceptor, *pumps]:
            thread.join(join_timeout_s)
