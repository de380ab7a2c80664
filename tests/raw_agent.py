"""Raw ZeroMQ access to a real agent, with the run's CURVE keys: for frames no client would send."""

from __future__ import annotations

import zmq

from qbench.protocols import codec
from qbench.protocols.messages import Message


def dealer(endpoint, keys="endpoint") -> zmq.Socket:
    """A DEALER connected to ``endpoint``; ``keys``: the endpoint's own (default), None for none, or RunKeys."""
    keys = getattr(endpoint, "keys", None) if keys == "endpoint" else keys
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            keys.agent_public, keys.host_public, keys.host_secret)
    sock.connect(str(endpoint))
    return sock


def raw(endpoint, frames: list, timeout_ms: int = 20000) -> Message:
    """Send ``frames`` as one message and decode the answer."""
    sock = dealer(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "agent did not answer"
        return codec.decode(sock.recv_multipart(), 1 << 30)
    finally:
        sock.close()
