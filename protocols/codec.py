"""Frames on the wire: ``[header JSON, tensor 0, tensor 1, ...]``.

The header is UTF-8 JSON::

    {"version": "1.0", "type": "capture_request", "id": "7f3a...", "status": null,
     "content": {...}, "buffers": [{"name": "x", "dtype": "float32", "shape": [2, 3, 224, 224]}]}

Tensor frames are the raw C-contiguous little-endian bytes of each array. Encoding
hands numpy buffers to ZeroMQ without copying; decoding wraps received frames with
``np.frombuffer`` (read-only views). Nothing is ever pickled or evaluated.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from .messages import ErrorCode, Message, ProtocolError, TensorDesc, from_dict
from .version import PROTOCOL_VERSION

#: dtypes allowed on the wire; anything else (object, void, datetime) is rejected.
WIRE_DTYPES = frozenset(
    ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64"]
)
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: how deeply a header's objects and lists may nest (a real one: 5)
MAX_DEPTH = 32
#: dims of a tensor (numpy's own limit is 64)
MAX_DIMS = 32


def encode(msg: Message) -> list[Any]:
    """Frames for ``msg``: header bytes, then one buffer per tensor (no copy when contiguous)."""
    buffers, descs = [], []
    names = msg.names or [""] * len(msg.tensors)
    for name, tensor in zip(names, msg.tensors, strict=True):
        arr = np.ascontiguousarray(tensor)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.name not in WIRE_DTYPES:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"dtype {arr.dtype} cannot travel", origin="codec")
        descs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b"")
    header = {
        "version": msg.version or PROTOCOL_VERSION,
        "type": msg.type,
        "id": msg.id,
        "status": msg.status,
        "content": msg.content,
        "buffers": descs,
    }
    return [json.dumps(header, allow_nan=False).encode(), *buffers]


def decode(frames: Sequence[Any], max_frame_bytes: int) -> Message:
    """Parse frames (bytes or zmq.Frame) into a :class:`Message`.

    Raises:
        ProtocolError: ``too_large`` for a frame over ``max_frame_bytes``; ``bad_message``
            for a header that is not a JSON object, a dtype not allowed, or a frame whose
            length does not match its declared shape.
    """
    if not frames:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message", origin="codec")
    views = [_buffer(f) for f in frames]
    if len(views[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, "header frame over the cap", origin="codec")
    for view in views[1:]:
        if len(view) > max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"frame of {len(view)} bytes over the cap of {max_frame_bytes}", origin="codec"
            )
    header = _header(views[0])
    content = header.get("content") or {}
    descs = header.get("buffers") or []
    if not isinstance(content, dict) or not isinstance(descs, list):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "content must be an object, buffers a list", origin="codec")
    if len(descs) != len(views) - 1:
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, f"{len(descs)} buffers declared, {len(views) - 1} frames sent", origin="codec"
        )
    tensors = [_tensor(from_dict(TensorDesc, d), v) for d, v in zip(descs, views[1:])]
    return Message(
        type=header["type"],
        id=str(header.get("id", "")),
        content=content,
        tensors=tensors,
        names=[d.get("name", "") if isinstance(d, dict) else "" for d in descs],
        status=header.get("status"),
        version=str(header.get("version", "")),
    )


def peek(frame: Any) -> tuple[str, str]:
    """(type, id) of a message from its header frame alone, for the error reply to a message refused
    before it is decoded; ("unknown_request", "") when the header does not say."""
    try:
        header = _header(_buffer(frame))
    except ProtocolError:
        return "unknown_request", ""
    return header["type"], str(header.get("id", ""))


def _header(view: memoryview) -> dict:
    try:
        header = json.loads(bytes(view), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is not JSON: {str(exc)[:200]}", origin="codec") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "header must be an object with a type", origin="codec")
    if _depth(header) > MAX_DEPTH:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header nested deeper than {MAX_DEPTH}", origin="codec")
    return header


def _not_json(constant: str) -> None:
    # Python's json reads NaN and Infinity, which JSON has not: a NaN timeout would be no deadline at all
    raise ValueError(f"{constant} is not JSON")


def _depth(value: Any) -> int:
    """How deeply ``value``'s lists and objects nest (iteratively: a deep one must not exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        todo.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return deepest


def _buffer(frame: Any) -> memoryview:
    return memoryview(getattr(frame, "buffer", frame)).cast("B")


def _tensor(desc: TensorDesc, view: memoryview) -> np.ndarray:
    if desc.dtype not in WIRE_DTYPES:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"dtype {desc.dtype!r} not allowed", origin="codec")
    if len(desc.shape) > MAX_DIMS or any(type(d) is not int or not 0 <= d < 2**31 for d in desc.shape):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"bad shape {str(desc.shape)[:200]}", origin="codec")
    dtype = np.dtype(desc.dtype).newbyteorder("<")
    expected = math.prod(desc.shape) * dtype.itemsize  # Python ints: no int64 overflow
    if expected != len(view):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"tensor {desc.name!r}: {len(view)} bytes for shape {desc.shape} {desc.dtype}",
            origin="codec",
        )
    try:
        return np.frombuffer(view, dtype=dtype).reshape(desc.shape)
    except ValueError as exc:  # dims numpy cannot hold even for an empty tensor
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"bad shape {str(desc.shape)[:200]}: {exc}", origin="codec") from exc
