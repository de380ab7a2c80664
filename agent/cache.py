"""Content-addressed model cache: ``<cache>/<sha256>.<format>``, written chunk by chunk.

A model is named only by its sha256 hex digest and a format from a fixed set, so a
request can never name a path outside the cache directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

from qbench.protocols.messages import ErrorCode, ModelRef, ProtocolError

FORMATS = ("onnx", "tflite")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelCache:
    """Models by content hash. Partial uploads live in ``*.part`` until their hash checks."""

    def __init__(self, root: str | os.PathLike, max_model_bytes: int):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_model_bytes = max_model_bytes

    def path(self, ref: ModelRef) -> Path:
        """The cache path of ``ref``. Raises ProtocolError(bad_message) for a malformed reference."""
        if not isinstance(ref.sha256, str) or not _SHA256.match(ref.sha256):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "model sha256 must be 64 lowercase hex digits")
        if ref.format not in FORMATS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"model format must be one of {FORMATS}")
        return self.root / f"{ref.sha256}.{ref.format}"

    def has(self, ref: ModelRef) -> bool:
        return self.path(ref).is_file()

    def require(self, ref: ModelRef) -> Path:
        """The path of a cached model, or ProtocolError(model_missing)."""
        path = self.path(ref)
        if not path.is_file():
            raise ProtocolError(ErrorCode.MODEL_MISSING, f"model {ref.sha256[:12]} is not in the agent's cache")
        return path

    def write_chunk(self, ref: ModelRef, total_bytes: int, offset: int, chunk: memoryview) -> tuple[int, bool]:
        """Append ``chunk`` at ``offset``; on the last byte, verify the hash and publish.

        Returns:
            (bytes received so far, whether the model is complete).
        """
        final = self.path(ref)
        if total_bytes > self.max_model_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"model of {total_bytes} bytes is over the agent's cap of {self.max_model_bytes}"
            )
        part = final.with_suffix(final.suffix + ".part")
        have = part.stat().st_size if part.exists() else 0
        if offset == 0:
            have = 0
        if offset != have or offset + len(chunk) > total_bytes:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"chunk at {offset} does not follow the {have} bytes received")
        try:
            with open(part, "r+b" if offset else "wb") as fh:
                fh.seek(offset)
                fh.write(chunk)
                fh.truncate()
        except OSError as exc:
            part.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                raise ProtocolError(ErrorCode.DISK_FULL, f"no space left in {self.root}") from exc
            raise
        received = offset + len(chunk)
        if received < total_bytes:
            return received, False
        digest = _sha256_file(part)
        if digest != ref.sha256:
            part.unlink(missing_ok=True)
            raise ProtocolError(ErrorCode.MODEL_CORRUPT, f"uploaded model hashes to {digest[:12]}, not {ref.sha256[:12]}")
        os.replace(part, final)
        return received, True


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
