"""``--save-tensors DIR``: the captured tensors, written to disk as they stream in from the agent.

Layout of ``DIR``:

* ``<name>.float.npy``: the float model's tensor, shape ``(samples, *shape)``;
* ``<name>.int8.npy``: the int8 model's tensor, dequantized to float32 as the comparison
  used it (``(q - zero_point) * scale``), raw when the pair has no quantization parameters;
* ``index.json``: ``{"samples", "tensors": [{"name", "int8_name", "float", "int8", "shape",
  "float_dtype", "int8_dtype", "dequantized", "qparams", "complete"}]}``, one entry per
  tensor received, in capture order.

``<name>`` is the float tensor's name reduced to ``[A-Za-z0-9_.-]`` (a clash gets
``-<n>``), so no name from a model can point outside ``DIR``. Each message is one chunk of
one sample's tensor; it is written into a memory map of its file at its offset, so the
host never holds more than one chunk, whatever the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
import numpy as np

from qbench.protocols.messages import CapturePair, CaptureReply, CaptureRequest, ErrorInfo, Message, to_dict

from .transport.client import AgentClient, AgentError, ProgressFn

SIDES = ("float", "int8")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_NAME = 120


def safe_names(names: list[str]) -> list[str]:
    """A file name stem per tensor name: only ``[A-Za-z0-9_.-]``, no leading dot, unique (case-insensitively)."""
    used: set[str] = set()
    out = []
    for index, name in enumerate(names):
        base = _UNSAFE.sub("_", name).strip("._-")[:_MAX_NAME] or "tensor"
        stem, n = base, index
        while stem.lower() in used:
            stem, n = f"{base}-{n}", n + 1
        used.add(stem.lower())
        out.append(stem)
    return out


def capture(client: AgentClient, req: CaptureRequest, inputs: dict[str, np.ndarray], progress: ProgressFn,
            directory: Path | None) -> CaptureReply:
    """``client.capture``, with the streamed tensors saved into ``directory`` when it is given."""
    if directory is None:
        return client.capture(req, inputs, progress)
    samples = next(iter(inputs.values())).shape[0] if inputs else 1
    store = TensorStore(directory, req.pairs, samples)
    try:
        return client.capture(req, inputs, progress, store.write)
    finally:
        store.close()


class TensorStore:
    """Writes ``tensor`` messages into ``directory`` (see the module doc)."""

    def __init__(self, directory: Path, pairs: list[CapturePair], samples: int):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pairs = pairs
        self.samples = samples
        self.stems = safe_names([p.float_name for p in pairs])
        self.entries: dict[int, dict] = {}  # pair index -> index.json entry
        self._written: dict[tuple[int, str], int] = {}  # elements written per (pair, side)

    def write(self, msg: Message) -> None:
        """Write one chunk. Raises AgentError (``bad_message``) for a chunk that does not fit what came before."""
        c = msg.content
        pair, side, sample, offset = c.get("pair"), c.get("side"), c.get("sample"), c.get("offset")
        shape, dtype = c.get("shape"), c.get("dtype")
        if not (_is_int(pair) and 0 <= pair < len(self.pairs) and side in SIDES and _is_int(sample)
                and 0 <= sample < self.samples and _is_int(offset) and offset >= 0 and isinstance(shape, list)
                and all(_is_int(d) and d >= 0 for d in shape) and len(msg.tensors) == 1):
            raise _bad(f"malformed tensor message {to_dict(c)}")
        piece = msg.tensors[0]
        if piece.dtype.name != dtype or piece.ndim != 1:
            raise _bad(f"tensor chunk of {self.pairs[pair].float_name!r} is {piece.dtype}, announced {dtype}")
        size = int(np.prod(shape, dtype=np.int64))
        if offset + piece.size > max(size, 1) or (size == 0 and piece.size):
            raise _bad(f"tensor chunk of {self.pairs[pair].float_name!r} overruns its shape {shape}")
        path = self._file(pair, side, shape, piece.dtype)
        if piece.size == 0:
            return
        data = np.lib.format.open_memmap(path, mode="r+")
        data.reshape(self.samples, -1)[sample, offset: offset + piece.size] = piece
        data.flush()
        del data
        self._written[(pair, side)] = self._written.get((pair, side), 0) + piece.size

    def _file(self, pair: int, side: str, shape: list[int], dtype: np.dtype) -> Path:
        """The file of ``pair``'s ``side``, created (sparse) by its first chunk."""
        entry = self.entries.get(pair)
        if entry is None:
            p = self.pairs[pair]
            entry = self.entries[pair] = {
                "name": p.float_name, "int8_name": p.int8_name, "float": None, "int8": None, "shape": shape,
                "float_dtype": None, "int8_dtype": None, "dequantized": p.qparams is not None and not p.exact,
                "qparams": to_dict(p.qparams) if p.qparams is not None else None, "complete": False,
            }
        elif entry["shape"] != shape:
            raise _bad(f"tensor {entry['name']!r} changed shape from {entry['shape']} to {shape}")
        path = self.dir / f"{self.stems[pair]}.{side}.npy"
        if entry[side] is None:
            if 0 in shape:
                np.save(path, np.zeros((self.samples, *shape), dtype), allow_pickle=False)  # nothing to map
            else:
                np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self.samples, *shape))
            entry[side], entry[f"{side}_dtype"] = path.name, dtype.name
        elif entry[f"{side}_dtype"] != dtype.name:
            raise _bad(f"tensor {entry['name']!r} ({side}) changed dtype")
        return path

    def close(self) -> None:
        """Write ``index.json`` (also after a failed capture: it lists what arrived)."""
        for pair, entry in self.entries.items():
            expected = self.samples * int(np.prod(entry["shape"], dtype=np.int64))
            entry["complete"] = all(self._written.get((pair, side), 0) == expected for side in SIDES)
        index = {"samples": self.samples, "tensors": [self.entries[k] for k in sorted(self.entries)]}
        (self.dir / "index.json").write_text(json.dumps(index, indent=1))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(message: str) -> AgentError:
    return AgentError(ErrorInfo("bad_message", message, "host"))

