"""Mutated protocol messages for the agent fuzz tests: each is a list of frames, seeded and reproducible.

Seeds are valid requests of every kind but shutdown (a valid one would end the agent); mutations
change values to wrong types and extremes, drop and add fields, nest deeply, break the frames
against their ``buffers`` descriptions, or corrupt the header bytes.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any, Iterator

import numpy as np

from qbench.protocols.version import PROTOCOL_VERSION

EXTREMES: list[Any] = [None, True, False, 0, -1, 1, 2**31, 2**40, 2**63, 2**64, -2**63, 1e308, -1e308, 1e-308,
                       0.5, "", "x" * 5000, "../../etc/passwd", "\n", [], {}, [1, 2, 3], {"a": 1}, "nan"]
#: JSON text that Python's own json accepts but JSON does not
CONSTANTS = ["NaN", "Infinity", "-Infinity"]
DTYPES = ["float32", "uint8", "int64", "object", "complex64", "float16", "bool", "<f4", "V8", "", 7]


def seeds(model_sha: str, int8_sha: str) -> list[tuple[dict, list[np.ndarray]]]:
    """(header, tensors) of one valid request of each kind; the jobs are short (one timed run)."""
    x = np.zeros((1, 1, 3, 16, 16), np.float32)
    ref, ref8 = {"sha256": model_sha, "format": "onnx"}, {"sha256": int8_sha, "format": "onnx"}
    timing = {"warmup": 0, "runs": 1, "min_seconds": 0.0, "max_runs": 1, "max_seconds": 5.0}
    runner = {"runtime": "onnxruntime", "providers": ["CPUExecutionProvider"], "provider_options": [],
              "threads": 1, "graph_optimization": "all"}
    chunk = np.frombuffer(b"0123456789", np.uint8)
    return [
        ({"type": "hello_request", "content": {"protocol_version": PROTOCOL_VERSION, "runtimes": ["onnxruntime"]}}, []),
        ({"type": "model_status_request", "content": {"model": ref}}, []),
        ({"type": "model_upload_request", "content": {"model": {"sha256": "ab" * 32, "format": "tflite"},
                                                       "total_bytes": 10, "offset": 0}}, [chunk]),
        ({"type": "benchmark_request", "content": {"model": ref, "runner": runner, "timing": timing,
                                                    "timeout_s": 60.0, "profile_runs": 0}}, [x]),
        ({"type": "capture_request", "content": {
            "float_model": ref, "int8_model": ref8, "runner": runner, "timeout_s": 60.0, "histogram_bins": 8,
            "pairs": [{"float_name": "conv1", "int8_name": "conv1", "nbytes": 4096, "exact": False,
                       "qparams": {"scale": [0.1], "zero_point": [0], "axis": None, "dtype": "int8"}}]}}, [x]),
    ]


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _set(root: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        root = root[key]
    root[path[-1]] = value


def _delete(root: Any, path: tuple) -> None:
    for key in path[:-1]:
        root = root[key]
    del root[path[-1]]


def _frames(header: dict, tensors: list[np.ndarray], rng: random.Random) -> tuple[dict, list[bytes]]:
    header.setdefault("version", PROTOCOL_VERSION)
    header.setdefault("id", f"fuzz-{rng.randrange(1 << 30)}")
    header.setdefault("status", None)
    header.setdefault("buffers", [{"name": "x" if t.dtype != np.uint8 else "chunk", "dtype": t.dtype.name,
                                   "shape": list(t.shape)} for t in tensors])
    return header, [t.tobytes() for t in tensors]


def mutate(seed: tuple[dict, list[np.ndarray]], rng: random.Random) -> list[bytes]:
    """One mutated message (header JSON, then tensor frames)."""
    header, frames = _frames(copy.deepcopy(seed[0]), list(seed[1]), rng)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.randrange(10)
        paths = [p for p in _paths(header) if p]
        if kind <= 2:  # a value replaced by an extreme or a wrong type
            _set(header, rng.choice(paths), copy.deepcopy(rng.choice(EXTREMES)))
        elif kind == 3:  # a field dropped
            _delete(header, rng.choice(paths))
        elif kind == 4:  # deep nesting where an object or a list goes
            _set(header, rng.choice(paths), json.loads("[" * 40 + "]" * 40) if rng.random() < 0.5 else "__DEEP__")
        elif kind == 5:  # a buffer described wrongly
            descs = header.get("buffers")
            if isinstance(descs, list) and descs and isinstance(descs[0], dict):
                field = rng.choice(["dtype", "shape", "name"])
                descs[0][field] = (rng.choice(DTYPES) if field == "dtype" else
                                   rng.choice([[2**62, 2**62, 0], [2**40, 2**40], [-1], [0], [1, 0, 3], [1] * 70,
                                               [10], "x", [1.5], [True]]) if field == "shape" else rng.choice(EXTREMES))
        elif kind == 6:  # frames added or taken away
            frames = frames + [bytes(rng.randrange(64))] * rng.randrange(1, 4) if rng.random() < 0.5 else frames[:-1]
        elif kind == 7:  # a tensor of no sample
            descs = header.get("buffers")
            if isinstance(descs, list) and descs and isinstance(descs[0], dict):
                descs[0]["shape"] = [0, 1, 3, 16, 16]
                frames = [b""] + frames[1:]
        elif kind == 8:  # another type
            header["type"] = rng.choice(["hello_request", "model_status_request", "model_upload_request",
                                         "benchmark_request", "capture_request", "exec_request", "hello_reply",
                                         "progress", "tensor", "_request", "", 5])
        else:  # a number where JSON has none
            path = rng.choice(paths)
            _set(header, path, "__CONSTANT__")
    text = json.dumps(header)
    text = text.replace('"__CONSTANT__"', rng.choice(CONSTANTS))
    text = text.replace('"__DEEP__"', "[" * 100_000 + "]" * 100_000)  # past the JSON parser's recursion limit
    data = text.encode()
    if rng.random() < 0.05:  # bytes flipped
        raw = bytearray(data)
        for _ in range(rng.randrange(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        data = bytes(raw)
    return [data, *frames]


def messages(count: int, model_sha: str, int8_sha: str, seed: int = 0) -> Iterator[list[bytes]]:
    """``count`` mutated messages, never a shutdown request."""
    rng = random.Random(seed)
    pool = seeds(model_sha, int8_sha)
    made = 0
    while made < count:
        frames = mutate(rng.choice(pool), rng)
        if b"shutdown" in frames[0]:
            continue
        made += 1
        yield frames
