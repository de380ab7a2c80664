"""``--save-tensors``: captured tensors stream from the worker through the agent to the host.

The worker writes each tensor of each sample, as a group finishes it, to
``JOBDIR/tensors/<seq>.npy`` and announces it with a ``{"tensor": {...}}`` line on stdout;
it waits while more than :data:`MAX_PENDING_BYTES` are on disk. The agent maps the file,
sends it as ``tensor`` messages of at most ``chunk_bytes`` each (zero-copy frames), waits
until ZeroMQ has let go of them, and deletes the file. So neither side ever holds more
than one tensor (plus the worker's current group), whatever the model and sample count.

The int8 side is written dequantized (float32), as the accumulators compare it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from qbench.protocols.messages import TENSOR, CapturePair, ErrorCode, Message, ProtocolError

from .reduce import CHUNK, Kernel

MAX_PENDING_BYTES = 64 * 1024 * 1024
#: how long the worker waits for the agent to take a file before it gives up
STALL_S = 600.0
_FILE = re.compile(r"[0-9]{8}\.npy")


class Spool:
    """The worker's side: writes tensors into ``JOBDIR/tensors`` and announces them."""

    def __init__(self, jobdir: Path, pairs: list[CapturePair], max_pending: int = MAX_PENDING_BYTES):
        self.dir = jobdir / "tensors"
        self.dir.mkdir(exist_ok=True)
        self.pairs = pairs
        self.max_pending = max_pending
        self._seq = 0

    def put_sample(self, indices: list[int], sample: int, tensors: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Write the float and int8 tensors of one sample of the pairs ``indices``."""
        for i, (f, q) in zip(indices, tensors):
            self._put(i, "float", sample, f, None)
            pair = self.pairs[i]
            kernel = None if pair.qparams is None or pair.exact else Kernel(pair, q.shape, np.dtype(np.float32), 0)
            self._put(i, "int8", sample, q, kernel)

    def _put(self, pair: int, side: str, sample: int, array: np.ndarray, kernel: Kernel | None) -> None:
        dtype = np.dtype(np.float32) if kernel is not None else array.dtype
        self._wait_for_room(array.size * dtype.itemsize)
        name = f"{self._seq:08d}.npy"
        self._seq += 1
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as fh:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": array.shape}
            np.lib.format.write_array_header_2_0(fh, header)
            flat = np.ascontiguousarray(array).reshape(-1)
            for start in range(0, flat.size, CHUNK):  # dequantized a chunk at a time: no float copy of the tensor
                chunk = flat[start: start + CHUNK]
                (chunk if kernel is None else kernel.dequantize(chunk, start)).tofile(fh)
        tmp.replace(self.dir / name)
        line = {"tensor": {"file": name, "pair": pair, "side": side, "sample": sample}}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def _wait_for_room(self, nbytes: int) -> None:
        deadline = time.monotonic() + STALL_S
        while True:
            pending = self._pending_bytes()
            if pending == 0 or pending + nbytes <= self.max_pending:
                return
            if time.monotonic() > deadline:
                raise ProtocolError(ErrorCode.INTERNAL, f"the agent took no saved tensor for {STALL_S:.0f} s")
            time.sleep(0.005)


    def _pending_bytes(self) -> int:
        total = 0
        for path in self.dir.glob("*.npy"):
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # the agent deleted it since the listing
                pass
        return total


def forward(jobdir: Path, info: dict, send: Callable[[Message], object], request_id: str, chunk_bytes: int) -> None:
    """The agent's side: send the announced file as ``tensor`` messages, then delete it.

    Args:
        jobdir: the worker's job folder; only ``jobdir/tensors/<8 digits>.npy`` is ever read.
        info: the worker's announcement ``{"file", "pair", "side", "sample"}``.
        send: sends one message and returns a ZeroMQ ``MessageTracker`` (or None).
        request_id: the capture request's id, which every tensor message carries.
        chunk_bytes: largest tensor frame to send.
    """
    name = str(info.get("file", ""))
    if not _FILE.fullmatch(name):
        raise ProtocolError(ErrorCode.INTERNAL, f"worker announced a bad tensor file {name!r}")
    path = jobdir / "tensors" / name
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # an empty tensor cannot be mapped
        array = np.load(path, allow_pickle=False)
    flat = array.reshape(-1)
    step = max(chunk_bytes // max(array.itemsize, 1), 1)
    for offset in range(0, max(flat.size, 1), step):
        content = {"pair": int(info["pair"]), "side": str(info["side"]), "sample": int(info["sample"]),
                   "shape": list(array.shape), "dtype": array.dtype.name, "offset": offset}
        tracker = send(Message(type=TENSOR, id=request_id, content=content, tensors=[flat[offset: offset + step]],
                               names=[""]))
        if tracker is not None:
            tracker.wait(STALL_S)  # ZeroMQ is done with the mapped pages: the next chunk may go
    del array, flat
    path.unlink()
