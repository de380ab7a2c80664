"""The agent's ROUTER loop: receive, validate, dispatch, reply.

Model work never runs in this process: each benchmark or capture runs in a worker
(``qbench.agent.worker``), forked from a zygote that preloaded its runtime (agent/launcher.py,
agent/zygote.py), so that a crash or out-of-memory in the runtime becomes a typed error and the
agent stays up. While a worker runs, its progress lines are forwarded to the host, with a
heartbeat every few seconds so the host can tell a slow job from a dead link.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq

from qbench.protocols import codec
from qbench.protocols.messages import (
    PROGRESS,
    REPLY,
    REQUEST,
    BenchmarkRequest,
    CaptureRequest,
    ErrorCode,
    EvaluateRequest,
    ErrorInfo,
    HelloReply,
    HelloRequest,
    Limits,
    Message,
    ModelRef,
    ModelStatusReply,
    ModelUploadReply,
    ModelUploadRequest,
    MsgType,
    ProtocolError,
    RunnerConfig,
    RuntimeInfo,
    ShutdownReply,
    from_dict,
    to_dict,
)
from qbench.protocols.version import PROTOCOL_VERSION, compatible

from . import AGENT_VERSION, tensor_spool
from .auth import check_bind, serve_curve
from .cache import ModelCache
from .checks import check_delegate, check_inputs, check_runner, check_timeout, check_timing
from .config import AgentConfig, start_zygotes
from .cpu import int8_features
from .launcher import Worker, Zygotes, job_runtime, oom_kills
from .memory import auto_capture_budget, total_memory_bytes
from .outputs import load_outputs
from .runners import COMPILED, RUNTIMES, check_accelerator, probed_with, runtime_of

log = logging.getLogger("qbench.agent")

HEARTBEAT_S = 2.0


class Agent:
    """Serves one ROUTER socket until a shutdown request, SIGTERM or stdin EOF."""

    def __init__(self, config: AgentConfig, zygotes: Zygotes | None = None):
        self.config = config
        self.cache = ModelCache(config.cache_dir, config.max_model_bytes, config.cache_max_bytes)
        self.jobs_dir = self.cache.root / "jobs"
        self.stopping = threading.Event()
        self._runtimes: dict[str, RuntimeInfo] = {}
        self._probed: set[str] = set()
        self._baselines: dict[str, float] = {}
        self.zygotes = zygotes or start_zygotes(config)
        self._ctx = zmq.Context()
        self.socket = self._ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes + codec.MAX_HEADER_BYTES)
        self.socket.setsockopt(zmq.LINGER, 1000)
        check_bind(config.bind, config.keys is not None)
        # CURVE before the bind: a client without the host's key never gets a message through
        self._authenticator = serve_curve(self._ctx, self.socket, *config.keys) if config.keys else None
        self.endpoint = self._bind(config.bind)
        self._handlers: dict[str, Callable[[Message], tuple[Any, list[np.ndarray], list[str]]]] = {
            MsgType.HELLO.value: self._hello,
            MsgType.MODEL_STATUS.value: self._model_status,
            MsgType.MODEL_UPLOAD.value: self._model_upload,
            MsgType.BENCHMARK.value: self._benchmark,
            MsgType.CAPTURE.value: self._capture,
            MsgType.EVALUATE.value: self._evaluate,
            MsgType.SHUTDOWN.value: self._shutdown,
        }
        self._identity = b""
        self._request: Message | None = None

    def _bind(self, bind: str) -> str:
        if bind.endswith(":0"):
            port = self.socket.bind_to_random_port(bind.rsplit(":", 1)[0])
            return f"{bind.rsplit(':', 1)[0]}:{port}"
        self.socket.bind(bind)
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self) -> None:
        """Answer requests until asked to stop."""
        if self.config.exit_on_stdin_eof:
            threading.Thread(target=self._watch_stdin, daemon=True).start()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(200):
                continue
            self._identity = self.socket.recv()
            frames, refused = self._receive()
            self._handle(frames, refused)
        self.zygotes.close()
        self.socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._ctx.term()

    def _receive(self) -> tuple[list, ProtocolError | None]:
        """The frames of one message, read one by one: past ``max_frames`` or ``max_message_bytes`` the
        rest are read and dropped at once (only the header is kept, for the error reply)."""
        frames: list = []
        total, refused = 0, None
        cap_frames, cap_bytes = self.config.max_frames + 1, self.config.max_message_bytes
        while self.socket.getsockopt(zmq.RCVMORE):
            frame = self.socket.recv(copy=False)
            total += len(frame)
            if refused is None and len(frames) >= cap_frames:
                refused = ProtocolError(ErrorCode.TOO_LARGE, f"more than {self.config.max_frames} tensor frames")
            elif refused is None and total > cap_bytes:
                refused = ProtocolError(ErrorCode.TOO_LARGE, f"message over {cap_bytes} bytes")
            if refused is None or not frames:
                frames.append(frame)
        if refused is not None:
            del frames[1:]
        return frames, refused

    def _watch_stdin(self) -> None:
        # Over SSH the agent's stdin is the channel: EOF means the host is gone.
        while sys.stdin.buffer.read(4096):
            pass
        log.info("stdin closed: stopping")
        self.stopping.set()

    def _handle(self, frames: list, refused: ProtocolError | None = None) -> None:
        msg_type, msg_id = "unknown_request", ""
        try:
            if refused is not None:
                msg_type, msg_id = codec.peek(frames[0])
                raise refused
            msg = codec.decode(frames, self.config.max_frame_bytes)
            msg_type, msg_id = msg.type, msg.id
            if not compatible(msg.version):
                raise ProtocolError(
                    ErrorCode.VERSION_MISMATCH,
                    f"host speaks protocol {msg.version}, agent speaks {PROTOCOL_VERSION}: deploy a matching agent",
                )
            if not msg.type.endswith(REQUEST) or msg.type[: -len(REQUEST)] not in self._handlers:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {msg.type!r}")
            self._request = msg
            content, tensors, names = self._handlers[msg.type[: -len(REQUEST)]](msg)
            self._send(Message(type=_reply_type(msg_type), id=msg_id, content=to_dict(content),
                               tensors=tensors, names=names, status="ok"))
        except ProtocolError as exc:
            self._send_error(msg_type, msg_id, exc.info)
        except Exception as exc:  # the agent must survive anything a request does to it
            log.exception("request %s failed", msg_type)
            info = ErrorInfo(ErrorCode.INTERNAL.value, f"{type(exc).__name__}: {exc}", "agent", traceback.format_exc())
            self._send_error(msg_type, msg_id, info)

    def _send_error(self, msg_type: str, msg_id: str, info: ErrorInfo) -> None:
        self._send(Message(type=_reply_type(msg_type), id=msg_id, content=to_dict(info), status="error"))

    def _send(self, msg: Message) -> None:
        self.socket.send_multipart([self._identity, *codec.encode(msg)], copy=False)

    def _send_tracked(self, msg: Message) -> zmq.MessageTracker:
        """Send without copying; the tracker tells when ZeroMQ no longer needs the tensor's memory."""
        return self.socket.send_multipart([self._identity, *codec.encode(msg)], copy=False, track=True)

    def _progress(self, stage: str, done: int, total: int) -> None:
        if self._request is not None:
            content = {"stage": stage, "done": done, "total": total}
            self._send(Message(type=PROGRESS, id=self._request.id, content=content))

    # ---- handlers: each returns (content, tensors, tensor names) ------------------

    def _hello(self, msg: Message):
        req = from_dict(HelloRequest, msg.content)
        # names from the wire: only known runtimes get a zygote (and a log file named after them)
        hinted = [r for r in req.runtimes if r in RUNTIMES and r != COMPILED]
        # their imports (begun at start-up with --warm) overlap the probe, which forks from the first one's zygote
        self.warm(hinted)
        runtimes = self.runtimes(probed_with(hinted), probe_zygote=hinted[0] if hinted else "")
        if not hinted:
            self.warm([r for r in runtimes if r != COMPILED])  # CompiledModel jobs fork from "tflite"
        for missing in set(hinted) - set(runtimes):
            self.zygotes.stop(missing)  # its jobs fail with runtime_missing before any fork
        reply = HelloReply(
            protocol_version=PROTOCOL_VERSION,
            agent_version=AGENT_VERSION,
            python=platform.python_version(),
            machine=platform.machine(),
            system=f"{platform.system()} {platform.release()}",
            cpu_count=len(self.config.cpus) or os.cpu_count() or 1,
            total_memory_bytes=(self.config.memory_limit_mb or 0) * 1024 * 1024 or total_memory_bytes(),
            runtimes=runtimes,
            limits=Limits(self.config.max_frame_bytes, self.config.max_model_bytes, self.config.chunk_bytes,
                          self.config.max_message_bytes, self.config.max_frames),
            emulation={k: v for k, v in (("threads", self.config.threads), ("cpus", self.config.cpus),
                                         ("memory_limit_mb", self.config.memory_limit_mb)) if v},
            cpu_features=int8_features(platform.machine()),
        )
        return reply, [], []

    def runtimes(self, wanted: list[str], probe_zygote: str = "") -> dict[str, RuntimeInfo]:
        """Those of ``wanted`` importable here, each probed once in a worker: a broken runtime must not crash the agent.

        The probe's worker forks from ``probe_zygote`` (it imports the runtimes itself; a zygote that
        failed to preload its runtime serves as well); the runtime-less zygote "" is stopped after it.
        """
        todo = [r for r in wanted if r in RUNTIMES and r not in self._probed]
        if todo:
            result = self._run_job({"kind": "probe", "runtimes": todo}, [], [], timeout_s=120.0, progress=False,
                                   zygote=probe_zygote)
            self._runtimes.update(from_dict(dict[str, RuntimeInfo], result["runtimes"]))
            self._probed.update(todo)
            self.zygotes.stop("")
        return {r: self._runtimes[r] for r in wanted if r in self._runtimes}

    def warm(self, runtimes: list[str]) -> None:
        """Start the worker zygotes of ``runtimes`` in the background, so the first job finds its imports done."""
        self.zygotes.warm(runtimes)

    def _model_status(self, msg: Message):
        ref = from_dict(ModelRef, msg.content.get("model", {}))
        path = self.cache.path(ref)
        return ModelStatusReply(present=path.is_file(), size_bytes=path.stat().st_size if path.is_file() else 0), [], []

    def _model_upload(self, msg: Message):
        req = from_dict(ModelUploadRequest, msg.content)
        if len(msg.tensors) != 1 or msg.tensors[0].dtype != np.uint8:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "model_upload carries exactly one uint8 frame")
        if msg.tensors[0].size > self.config.chunk_bytes:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"chunk over {self.config.chunk_bytes} bytes")
        received, complete = self.cache.write_chunk(req.model, req.total_bytes, req.offset, msg.tensors[0].data)
        return ModelUploadReply(received_bytes=received, complete=complete), [], []

    def _benchmark(self, msg: Message):
        req = from_dict(BenchmarkRequest, msg.content)
        check_timing(req.timing, req.profile_runs)
        self._check_job(req.runner, req.timeout_s, msg)
        job = {
            "kind": "benchmark",
            "request": to_dict(req),
            "model_path": str(self.cache.require(req.model)),
            "baseline_mb": self._baseline(req.runner),
            "max_frame_bytes": self.config.max_frame_bytes,
        }
        returned: list = []
        content = self._run_job(job, msg.tensors, msg.names, req.timeout_s, returned=returned)
        tensors, names = returned
        return content, tensors, names

    def _capture(self, msg: Message):
        req = from_dict(CaptureRequest, msg.content)
        self._check_job(req.runner, req.timeout_s, msg)
        if req.budget_bytes <= 0:
            req.budget_bytes = auto_capture_budget(self.config.memory_limit_mb)
        job = {
            "kind": "capture",
            "request": to_dict(req),
            "float_model_path": str(self.cache.require(req.float_model)),
            "int8_model_path": str(self.cache.require(req.int8_model)),
        }
        return self._run_job(job, msg.tensors, msg.names, req.timeout_s), [], []

    def _evaluate(self, msg: Message):
        req = from_dict(EvaluateRequest, msg.content)
        self._apply_defaults(req.runner)
        job = {
            "kind": "evaluate",
            "request": to_dict(req),
            "reference_path": str(self.cache.require(req.reference)),
            "model_paths": [str(self.cache.require(ref)) for ref in req.models],
        }
        return self._run_job(job, msg.tensors, msg.names, req.timeout_s), [], []

    def _shutdown(self, msg: Message):
        self.stopping.set()
        return ShutdownReply(), [], []

    def _check_job(self, runner: RunnerConfig, timeout_s: float, msg: Message) -> None:
        """What every job request must satisfy before a worker starts (agent/checks.py), then the runner's defaults."""
        check_timeout(timeout_s)
        check_runner(runner)
        check_delegate(runner, self.config.delegate_paths, self.cache.root)
        check_inputs(msg.tensors, msg.names)
        self._apply_defaults(runner)

    def _apply_defaults(self, runner: RunnerConfig) -> None:
        if runner.threads is None and self.config.threads:
            runner.threads = self.config.threads
        runtimes = self.runtimes(list(dict.fromkeys([runner.runtime, runtime_of(runner)])))
        if runner.runtime not in runtimes:
            raise ProtocolError(
                ErrorCode.RUNTIME_MISSING,
                f"runtime {runner.runtime!r} is not installed on the agent; installed: "
                f"{sorted(self.runtimes(list(RUNTIMES)))}",
            )
        check_accelerator(runner, runtimes)

    def _baseline(self, runner: RunnerConfig) -> float:
        """VmHWM of a worker that only imported the runtime: what the model adds is measured over it."""
        if runner.runtime not in self._baselines:
            result = self._run_job({"kind": "baseline", "runner": to_dict(runner)}, [], [], 120.0, progress=False)
            self._baselines[runner.runtime] = float(result["peak_mb"])
        return self._baselines[runner.runtime]

    # ---- workers -----------------------------------------------------------------

    def _run_job(self, job: dict, tensors: list, names: list[str], timeout_s: float, progress: bool = True,
                 returned: list | None = None, zygote: str | None = None) -> dict:
        """The worker's result; ``returned``, when given, gets the [tensors, names] it saved (agent/outputs.py).

        ``zygote``: the runtime whose zygote forks the worker; by default the job's own.
        """
        jobdir = self.jobs_dir / uuid.uuid4().hex
        try:
            self._write_job(jobdir, job, tensors, names)
            result = self._wait_worker(jobdir, timeout_s, progress, job_runtime(job) if zygote is None else zygote)
            if returned is not None:
                returned.extend(load_outputs(jobdir))
            return result
        finally:
            shutil.rmtree(jobdir, ignore_errors=True)

    def _write_job(self, jobdir: Path, job: dict, tensors: list, names: list[str]) -> None:
        try:
            jobdir.mkdir(parents=True)
            for k, tensor in enumerate(tensors):
                np.save(jobdir / f"in_{k}.npy", tensor, allow_pickle=False)
            (jobdir / "job.json").write_text(json.dumps({**job, "inputs": list(names)}))
        except OSError as exc:
            if exc.errno == 28:
                raise ProtocolError(ErrorCode.DISK_FULL, f"no space left in {jobdir.parent}") from exc
            raise

    def _wait_worker(self, jobdir: Path, timeout_s: float, progress: bool, runtime: str) -> dict:
        stderr_path = jobdir / "stderr.txt"
        oom_before = oom_kills()
        with open(stderr_path, "wb") as stderr:
            proc = self.zygotes.start(runtime, jobdir, stderr.fileno(), timeout_s)
            try:
                self._pump(proc, timeout_s, progress, jobdir)
            finally:
                proc.finish()  # on a timeout or stop: os.killpg(SIGKILL) of the worker's group, then its status
        result_path = jobdir / "result.json"
        if not result_path.exists():
            tail = "\n".join(deque(stderr_path.read_text(errors="replace").splitlines(), maxlen=15))
            raise _exit_error(proc.returncode, oom_before, tail)
        result = json.loads(result_path.read_text())
        if "error" in result:
            err = from_dict(ErrorInfo, result["error"])
            exc = ProtocolError(err.code, err.message, err.origin)
            exc.info.traceback = err.traceback
            raise exc
        return result["ok"]

    def _pump(self, proc: Worker, timeout_s: float, progress: bool, jobdir: Path) -> None:
        """Forward the worker's progress lines (and saved tensors) until it exits; kill it at the deadline or on stop."""
        deadline = time.monotonic() + timeout_s
        last_sent = time.monotonic()
        stage = {"stage": "", "done": 0, "total": 0}  # heartbeats before the worker's first line: no stage, no total
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        buffered = b""
        while True:
            if time.monotonic() > deadline:
                raise ProtocolError(ErrorCode.WORKER_TIMEOUT, f"worker did not finish within {timeout_s:.0f} s")
            if self.stopping.is_set():
                raise ProtocolError(ErrorCode.INTERNAL, "agent is stopping")
            if selector.select(timeout=0.5):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        continue
                    if "tensor" in parsed:  # --save-tensors: a file to stream (tensor_spool)
                        tensor_spool.forward(jobdir, parsed["tensor"], self._send_tracked, self._request.id,
                                             self.config.chunk_bytes)
                        last_sent = time.monotonic()
                        continue
                    stage = parsed
                    if progress:
                        self._progress(stage.get("stage", ""), int(stage.get("done", 0)), int(stage.get("total", 0)))
                        last_sent = time.monotonic()
            if progress and time.monotonic() - last_sent > HEARTBEAT_S:
                self._progress(stage.get("stage", ""), int(stage.get("done", 0)), int(stage.get("total", 0)))
                last_sent = time.monotonic()
        selector.close()
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            raise ProtocolError(ErrorCode.WORKER_TIMEOUT, f"worker did not finish within {timeout_s:.0f} s") from None


def _exit_error(returncode: int | None, oom_before: int | None, tail: str) -> ProtocolError:
    """Why a worker ended without a result. A SIGKILL is out of memory only if the kernel's OOM killer
    acted meanwhile (where the kernel does not say, it is taken to be); any other signal is a crash."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        oom_after = oom_kills()
        oom = oom_before is None or oom_after is None or oom_after > oom_before
        if returncode == -signal.SIGKILL and oom:
            return ProtocolError(ErrorCode.OUT_OF_MEMORY,
                                 f"worker killed by the kernel (out of memory)\n{tail}".rstrip())
        return ProtocolError(ErrorCode.WORKER_CRASHED, f"worker killed by signal {name}\n{tail}".rstrip())
    return ProtocolError(ErrorCode.WORKER_CRASHED, f"worker exited with status {returncode}\n{tail}".rstrip())


def _reply_type(request_type: str) -> str:
    base = request_type[: -len(REQUEST)] if request_type.endswith(REQUEST) else request_type
    return base + REPLY
