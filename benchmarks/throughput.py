"""ZeroMQ loopback throughput of tensor frames through ``qbench.protocols.codec``.

The sender (a separate process, like the agent) binds a ROUTER on ``tcp://127.0.0.1``
and, once the receiver's DEALER says hello, sends ``count`` messages of one float32
tensor of ``megabytes`` MB each, zero-copy (``copy=False``). The receiver (this process,
like the host) receives with ``copy=False`` and decodes with ``codec.decode``, which
wraps each frame with ``np.frombuffer``. Throughput is payload bytes over the time from
the hello to the last decoded message.

``--curve`` encrypts the connection with ZeroMQ CURVE, as every qbench agent session is (per-run
keys, :mod:`qbench.agent.auth`): what a run's tensors really cost on loopback. Without it, the
transport and codec alone.

    python -m benchmarks.throughput --megabytes 64 --count 20 [--curve]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np
import zmq

from qbench.protocols.codec import decode, encode
from qbench.protocols.messages import Message

_TIMEOUT_MS = 60_000


def _serve(endpoint_queue, megabytes: int, count: int, server_secret: bytes | None) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, _TIMEOUT_MS)
    if server_secret is not None:
        sock.curve_server = True
        sock.curve_secretkey = server_secret
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    endpoint_queue.put(f"tcp://127.0.0.1:{port}")
    if not sock.poll(_TIMEOUT_MS):
        return
    identity, _ = sock.recv_multipart()
    tensor = np.random.default_rng(0).random(megabytes * 2**20 // 4, dtype=np.float32)
    for i in range(count):
        msg = Message(type="tensor_chunk", id=str(i), content={"index": i}, tensors=[tensor], names=["t"])
        sock.send_multipart([identity, *encode(msg)], copy=False)
    sock.close()
    ctx.term()


def measure(megabytes: int = 64, count: int = 20, curve: bool = False) -> dict:
    """Receive ``count`` tensors of ``megabytes`` MB; returns bytes, seconds and GB/s."""
    server_public, server_secret = zmq.curve_keypair() if curve else (None, None)
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    sender = spawn.Process(target=_serve, args=(queue, megabytes, count, server_secret), daemon=True)
    sender.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_public
    try:
        sock.connect(queue.get(timeout=_TIMEOUT_MS / 1000))
        received, checksum = 0, 0.0
        start = time.perf_counter()
        sock.send(b"hello")
        for _ in range(count):
            if not sock.poll(_TIMEOUT_MS):
                raise TimeoutError("sender stopped sending")
            msg = decode(sock.recv_multipart(copy=False), max_frame_bytes=2**31)
            received += msg.tensors[0].nbytes
            checksum += float(msg.tensors[0][-1])  # touch the decoded view
        seconds = time.perf_counter() - start
    finally:
        sock.close()
        ctx.term()
        sender.join(timeout=_TIMEOUT_MS / 1000)
    return {"message_mb": megabytes, "messages": count, "curve": curve, "bytes": received, "seconds": seconds,
            "gb_per_s": received / seconds / 1e9, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--curve", action="store_true", help="encrypt with ZeroMQ CURVE, as agent sessions are")
    args = parser.parse_args()
    print(json.dumps(measure(args.megabytes, args.count, args.curve)))


if __name__ == "__main__":
    main()
