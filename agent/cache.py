"""Content-addressed model cache: ``<cache>/<sha256>.<format>``, written chunk by chunk.

A model is named only by its sha256 hex digest and a format from a fixed set, so a
request can never name a path outside the cache directory.

Several agents may share one cache (every local run starts its own agent on ``~/.qbench/cache``), so:

- each upload writes a temporary file of its own (``<sha256>.<format>.<random>.part``) and publishes
  it with an atomic rename once its hash checks: a model under its final name is always whole;
- an upload whose model another agent has published meanwhile stops there, complete;
- a partial file no upload has written to for :data:`PART_EXPIRY_S` is deleted (its agent is gone);
- above the size cap, the least recently used models are deleted; a model used in the last
  :data:`IN_USE_S` is kept, as another agent's job may be about to load it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from qbench.protocols.messages import ErrorCode, ModelRef, ProtocolError

FORMATS = ("onnx", "tflite")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: a partial upload untouched this long is abandoned
PART_EXPIRY_S = 3600.0
#: a model used this recently is never evicted
IN_USE_S = 600.0
#: the default size cap: this share of the cache's file system
DEFAULT_DISK_SHARE = 0.10


class ModelCache:
    """Models by content hash. Partial uploads live in ``*.part`` files until their hash checks.

    Args:
        root: the cache directory (created).
        max_model_bytes: the largest model accepted.
        max_bytes: evict least recently used models above this total; None: a tenth of the disk.
    """

    def __init__(self, root: str | os.PathLike, max_model_bytes: int, max_bytes: int | None = None):
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_model_bytes = max_model_bytes
        if max_bytes is None:
            max_bytes = int(shutil.disk_usage(self.root).total * DEFAULT_DISK_SHARE)
        self.max_bytes = max_bytes
        self._parts: dict[Path, Path] = {}  # final path -> this agent's partial file for it
        self.expire_parts()

    def path(self, ref: ModelRef) -> Path:
        """The cache path of ``ref``. Raises ProtocolError(bad_message) for a malformed reference."""
        if not isinstance(ref.sha256, str) or not _SHA256.fullmatch(ref.sha256):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "model sha256 must be 64 lowercase hex digits")
        if ref.format not in FORMATS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"model format must be one of {FORMATS}")
        return self.root / f"{ref.sha256}.{ref.format}"

    def has(self, ref: ModelRef) -> bool:
        return self.path(ref).is_file()

    def require(self, ref: ModelRef) -> Path:
        """The path of a cached model, or ProtocolError(model_missing); marks it used (see :meth:`evict`)."""
        path = self.path(ref)
        try:
            os.utime(path)
        except FileNotFoundError:
            raise ProtocolError(ErrorCode.MODEL_MISSING,
                                f"model {ref.sha256[:12]} is not in the agent's cache") from None
        return path

    def write_chunk(self, ref: ModelRef, total_bytes: int, offset: int, chunk: memoryview) -> tuple[int, bool]:
        """Write ``chunk`` at ``offset`` of this agent's partial file; on the last byte, verify the hash and publish.

        Returns:
            (bytes received so far, whether the model is complete).
        """
        final = self.path(ref)
        if total_bytes < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"total_bytes must be at least 0, not {total_bytes}")
        if total_bytes > self.max_model_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"model of {total_bytes} bytes is over the agent's cap of {self.max_model_bytes}"
            )
        if final.is_file() and final.stat().st_size == total_bytes:  # published meanwhile (by another agent?)
            self._drop(final)
            return total_bytes, True
        if offset == 0:
            self._drop(final)
            self.expire_parts()
            self._parts[final] = final.with_name(f"{final.name}.{uuid.uuid4().hex[:12]}.part")
        part = self._parts.get(final)
        have = part.stat().st_size if part is not None and part.exists() else 0
        if part is None or offset != have or offset + len(chunk) > total_bytes:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"chunk at {offset} does not follow the {have} bytes received")
        try:
            with open(part, "r+b" if offset else "wb") as fh:
                fh.seek(offset)
                fh.write(chunk)
        except OSError as exc:
            self._drop(final)
            if exc.errno == errno.ENOSPC:
                raise ProtocolError(ErrorCode.DISK_FULL, f"no space left in {self.root}") from exc
            raise
        received = offset + len(chunk)
        if received < total_bytes:
            return received, False
        digest = _sha256_file(part)
        if digest != ref.sha256:
            self._drop(final)
            raise ProtocolError(ErrorCode.MODEL_CORRUPT,
                                f"uploaded model hashes to {digest[:12]}, not {ref.sha256[:12]}")
        os.replace(part, final)  # atomic: another agent sees no model or the whole one
        del self._parts[final]
        self.evict(keep=final)
        return received, True

    def _drop(self, final: Path) -> None:
        part = self._parts.pop(final, None)
        if part is not None:
            part.unlink(missing_ok=True)

    def expire_parts(self) -> None:
        """Delete partial uploads nobody has written to for :data:`PART_EXPIRY_S` (their agents are gone)."""
        now = time.time()
        for part in self.root.glob("*.part"):
            try:
                if now - part.stat().st_mtime > PART_EXPIRY_S:
                    part.unlink()
            except FileNotFoundError:  # another agent expired it first
                pass

    def models(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every published model, least recently used first."""
        found = []
        for fmt in FORMATS:
            for path in self.root.glob(f"*.{fmt}"):
                if _SHA256.fullmatch(path.stem):
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime, st.st_size, path))
        return sorted(found)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used models until the cache fits ``max_bytes``; the deleted paths.

        ``keep`` and models used in the last :data:`IN_USE_S` stay, even over the cap.
        """
        models = self.models()
        total = sum(size for _, size, _ in models)
        deleted = []
        now = time.time()
        for used, size, path in models:
            if total <= self.max_bytes:
                break
            if path == keep or now - used < IN_USE_S:
                continue
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path)
        return deleted


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
