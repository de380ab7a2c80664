"""The host's ZeroMQ DEALER: one request at a time, typed errors, bounded waits.

A reply must arrive within ``timeout_s`` of the last message from the agent: the
agent sends progress (or a heartbeat) every few seconds while a job runs, so a
silent agent is a dead agent or a dead link, and the call fails in bounded time.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import zmq

from qbench.protocols import codec
from qbench.protocols.messages import (
    PROGRESS,
    REPLY,
    REQUEST,
    TENSOR,
    BenchmarkReply,
    BenchmarkRequest,
    CaptureReply,
    CaptureRequest,
    ErrorInfo,
    EvaluateReply,
    EvaluateRequest,
    HelloReply,
    HelloRequest,
    Message,
    ModelRef,
    ModelStatusReply,
    ModelUploadReply,
    MsgType,
    from_dict,
    to_dict,
)
from qbench.protocols.version import PROTOCOL_VERSION, compatible

from .. import __version__
from .base import RunKeys

ProgressFn = Callable[[str, int, int], None]


class AgentError(Exception):
    """A typed error reply from the agent (or a failure to get one)."""

    def __init__(self, info: ErrorInfo):
        super().__init__(f"{info.code}: {info.message}")
        self.info = info


class AgentClient:
    """Talks to one agent. ``timeout_s`` bounds the silence between two messages."""

    def __init__(self, endpoint: str, timeout_s: float = 60.0, keys: RunKeys | None = None):
        """``keys``: the run's CURVE keys; by default those of ``endpoint`` (an :class:`Endpoint` from a transport).
        An agent started with keys lets no client without them in: its requests then go unanswered."""
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        keys = keys if keys is not None else getattr(endpoint, "keys", None)
        if keys is not None:
            self._socket.curve_serverkey = keys.agent_public
            self._socket.curve_publickey = keys.host_public
            self._socket.curve_secretkey = keys.host_secret
        self._socket.connect(str(endpoint))
        self.info: HelloReply | None = None
        self.uploaded_bytes = 0

    def close(self) -> None:
        self._socket.close(0)

    def request(self, kind: MsgType, content: Any, tensors: dict[str, np.ndarray] | None = None,
                progress: ProgressFn | None = None, on_tensor: Callable[[Message], None] | None = None) -> dict:
        """Send ``<kind>_request`` and wait for its reply; returns the reply content (see :meth:`exchange`)."""
        return self.exchange(kind, content, tensors, progress, on_tensor).content

    def exchange(self, kind: MsgType, content: Any, tensors: dict[str, np.ndarray] | None = None,
                 progress: ProgressFn | None = None, on_tensor: Callable[[Message], None] | None = None) -> Message:
        """Send ``<kind>_request`` and wait for its reply; returns the whole reply, tensor frames included.

        ``on_tensor`` receives the ``tensor`` messages that come before a capture reply (save_tensors).

        Raises:
            AgentError: the agent replied with an error, or went silent for ``timeout_s``.
        """
        tensors = tensors or {}
        msg_id = uuid.uuid4().hex
        msg = Message(type=kind.value + REQUEST, id=msg_id, content=to_dict(content),
                      tensors=list(tensors.values()), names=list(tensors))
        if self.info is not None:
            self._check_sizes(msg)
        self._socket.send_multipart(codec.encode(msg), copy=False)
        while True:
            if not self._socket.poll(int(self.timeout_s * 1000)):
                raise AgentError(ErrorInfo("timeout", f"no answer from the agent at {self.endpoint} within "
                                                      f"{self.timeout_s:.0f} s during {kind.value}", "host"))
            reply = codec.decode(self._socket.recv_multipart(copy=False), max_frame_bytes=1 << 40)
            if reply.id != msg_id:
                continue  # a late reply to a request we gave up on
            if reply.type == PROGRESS:
                if progress is not None:
                    progress(str(reply.content.get("stage", "")), int(reply.content.get("done", 0)),
                             int(reply.content.get("total", 0)))
                continue
            if reply.type == TENSOR and on_tensor is not None:
                on_tensor(reply)
                continue
            if reply.type != kind.value + REPLY:
                raise AgentError(ErrorInfo("bad_message", f"unexpected {reply.type} to {kind.value}", "host"))
            if reply.status != "ok":
                raise AgentError(from_dict(ErrorInfo, reply.content))
            return reply

    def _check_sizes(self, msg: Message) -> None:
        limits = self.info.limits
        for name, tensor in zip(msg.names, msg.tensors):
            if tensor.nbytes > limits.max_frame_bytes:
                raise AgentError(ErrorInfo("too_large", f"input {name!r} is {tensor.nbytes} bytes, over the "
                                                        f"agent's frame cap of {limits.max_frame_bytes}", "host"))
        total = sum(t.nbytes for t in msg.tensors)
        if limits.max_message_bytes and total > limits.max_message_bytes:
            raise AgentError(ErrorInfo("too_large", f"{msg.type} carries {total} bytes, over the agent's "
                                                    f"message cap of {limits.max_message_bytes}", "host"))
        if limits.max_frames and len(msg.tensors) > limits.max_frames:
            raise AgentError(ErrorInfo("too_large", f"{msg.type} carries {len(msg.tensors)} tensors, over the "
                                                    f"agent's cap of {limits.max_frames}", "host"))

    def hello(self, runtimes: Sequence[str] = ()) -> HelloReply:
        """Connect; ``runtimes``: those the coming jobs use, so the agent can get their workers ready."""
        content = self.request(MsgType.HELLO, HelloRequest(PROTOCOL_VERSION, __version__, list(runtimes)))
        self.info = from_dict(HelloReply, content)
        if not compatible(self.info.protocol_version):
            raise AgentError(ErrorInfo("version_mismatch", f"agent speaks protocol {self.info.protocol_version}, "
                                                           f"host speaks {PROTOCOL_VERSION}", "host"))
        return self.info

    def ensure_model(self, path: Path, fmt: str, progress: ProgressFn | None = None,
                     sha256: str | None = None) -> ModelRef:
        """Upload ``path`` unless the agent already has its content; returns its reference.

        The file is sent chunk by chunk, so a model never sits in host memory whole. ``sha256``
        is the file's digest when the caller already has it (``ModelInfo.sha256``); else it is
        computed here, chunk by chunk too.
        """
        path = Path(path)
        size = path.stat().st_size
        ref = ModelRef(sha256=sha256 or _sha256_of(path), format=fmt)
        status = from_dict(ModelStatusReply, self.request(MsgType.MODEL_STATUS, {"model": to_dict(ref)}))
        if status.present:
            return ref
        if size > self.info.limits.max_model_bytes:
            raise AgentError(ErrorInfo("too_large", f"{path.name} is {size} bytes, over the agent's model cap "
                                                    f"of {self.info.limits.max_model_bytes}", "host"))
        chunk = self.info.limits.chunk_bytes
        with path.open("rb") as f:
            for offset in range(0, max(size, 1), chunk):
                part = np.frombuffer(f.read(chunk), dtype=np.uint8)
                content = {"model": to_dict(ref), "total_bytes": size, "offset": offset}
                reply = from_dict(ModelUploadReply, self.request(MsgType.MODEL_UPLOAD, content, {"chunk": part}))
                self.uploaded_bytes += part.size
                if progress is not None:
                    progress("upload", reply.received_bytes, size)
                if reply.complete:  # early too: another run's agent published the same model meanwhile
                    break
        return ref

    def ensure_models(self, models: Sequence[tuple[Path, str, str | None]],
                      progress: ProgressFn | None = None) -> list[ModelRef]:
        """:meth:`ensure_model` for each ``(path, format, sha256)``, under one ``upload`` progress whose total,
        known from the start, is the bytes of every file (a file the agent already has counts as sent)."""
        sizes = [Path(path).stat().st_size for path, _, _ in models]
        total, sent = sum(sizes), 0
        report = progress or (lambda stage, done, of: None)
        report("upload", 0, total)
        refs = []
        for (path, fmt, sha256), size in zip(models, sizes):
            refs.append(self.ensure_model(path, fmt, lambda stage, done, _, base=sent: report(stage, base + done, total),
                                          sha256))
            sent += size
            report("upload", sent, total)
        return refs

    def benchmark(self, req: BenchmarkRequest, inputs: dict[str, np.ndarray],
                  progress: ProgressFn | None = None) -> BenchmarkReply:
        return self.benchmark_outputs(req, inputs, progress)[0]

    def benchmark_outputs(self, req: BenchmarkRequest, inputs: dict[str, np.ndarray],
                          progress: ProgressFn | None = None) -> tuple[BenchmarkReply, dict[str, np.ndarray]]:
        """:meth:`benchmark`, plus the model outputs by name when ``req.return_outputs`` (leading sample axis)."""
        reply = self.exchange(MsgType.BENCHMARK, req, inputs, progress)
        return from_dict(BenchmarkReply, reply.content), dict(zip(reply.names, reply.tensors))

    def capture(self, req: CaptureRequest, inputs: dict[str, np.ndarray], progress: ProgressFn | None = None,
                on_tensor: Callable[[Message], None] | None = None) -> CaptureReply:
        return from_dict(CaptureReply, self.request(MsgType.CAPTURE, req, inputs, progress, on_tensor))

    def evaluate(self, req: EvaluateRequest, inputs: dict[str, np.ndarray],
                 progress: ProgressFn | None = None) -> EvaluateReply:
        """Output error of each of ``req.models`` against ``req.reference`` on ``inputs``, in one agent worker."""
        return from_dict(EvaluateReply, self.request(MsgType.EVALUATE, req, inputs, progress))

    def shutdown(self) -> None:
        self.request(MsgType.SHUTDOWN, {})


def _sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
