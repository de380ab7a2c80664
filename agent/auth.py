"""Who may drive the agent: CURVE with the keys the host gave at start, and where it may listen.

This module imports ZeroMQ only in :func:`serve_curve`: ``python -m qbench.agent`` checks its bind
before anything heavy is imported (agent/config.py).

Without keys (``--no-auth``, for development) the agent listens only where other machines cannot
reach it; any local user can then drive it, which is why the host always passes keys.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("qbench.agent")


def is_local(endpoint: str) -> bool:
    """Whether ``endpoint`` is reachable from this machine only: ``ipc://``, ``inproc://``, or TCP on a
    loopback address. The host part is parsed, never prefix-tested: ``tcp://localhost.example:1`` is not local."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or ";" in rest:  # "source;destination" is connect syntax, never a bind
        return False
    host, sep, _port = rest.rpartition(":")
    if not sep:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name (eth0) or a DNS name: not provably loopback
        return False


def check_bind(endpoint: str, keyed: bool) -> None:
    """Refuse a bind beyond loopback unless CURVE keys are configured.

    Raises:
        ValueError: the one line the agent prints before exiting.
    """
    if not keyed and not is_local(endpoint):
        raise ValueError(f"refusing to bind {endpoint} without CURVE keys: anyone who can reach it could drive "
                         "the agent (pass --keys-stdin, or bind tcp://127.0.0.1:PORT)")


class _OneClient:
    """ZAP credentials: only the host's public key is let in."""

    def __init__(self, host_public: bytes):
        self.host_public = host_public

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key == self.host_public
        if not allowed:
            log.warning("refused a client with an unknown CURVE key")
        return allowed


def serve_curve(ctx, socket, agent_secret: bytes, host_public: bytes):
    """Make ``socket`` (not yet bound) a CURVE server that lets in only ``host_public``.

    Returns:
        The ZAP authenticator (a thread on ``ctx``); stop it before terminating ``ctx``.
    """
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    if not zmq.has("curve"):
        raise RuntimeError(f"this pyzmq's libzmq {zmq.zmq_version()} has no CURVE (built without libsodium): "
                           "install pyzmq from PyPI, whose wheels have it")
    authenticator = ThreadAuthenticator(ctx)
    authenticator.start()
    authenticator.configure_curve_callback("*", _OneClient(host_public))
    socket.curve_secretkey = agent_secret
    socket.curve_publickey = zmq.curve_public(agent_secret)
    socket.curve_server = True
    return authenticator
