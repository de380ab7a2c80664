"""Keeps the runtimes' own chatter out of the user's terminal while we prepare and quantize.

ONNX Runtime logs from C++ straight to file descriptor 2, its quantization tools use the root
``logging`` logger and ``print``, and onnx emits Python warnings. None of it is for the user unless
they asked for ``--debug``; what was captured is passed on to the ``qbench.host.quantize`` logger at
DEBUG level so it is not lost.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

log = logging.getLogger("qbench.host.quantize")

_ORT_WARNING = 2  # onnxruntime's default severity; there is no getter to read the current one
_ORT_ERROR = 3


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def quiet_runtime(debug: bool = False) -> Iterator[None]:
    """Silences ONNX Runtime, onnx and their Python logging for the duration of the block.

    Output of other threads written meanwhile is captured too (file descriptors are process-wide).

    Args:
        debug: when True nothing is silenced (the user asked to see everything).
    """
    if debug:
        yield
        return
    import onnxruntime

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = _Capture()
    root.handlers = [handler]
    root.setLevel(logging.DEBUG)
    onnxruntime.set_default_logger_severity(_ORT_ERROR)
    py_out, py_err = io.StringIO(), io.StringIO()
    output = ""
    try:
        with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with _redirect_fds(sink), contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                    yield
            finally:
                sink.seek(0)
                output = py_out.getvalue() + py_err.getvalue() + sink.read().decode("utf-8", "replace")
    finally:
        onnxruntime.set_default_logger_severity(_ORT_WARNING)
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for record in handler.records:
            log.debug("[%s] %s", record.name, record.getMessage())
        if output.strip():
            log.debug("runtime output:\n%s", output.rstrip())


@contextlib.contextmanager
def _redirect_fds(sink) -> Iterator[None]:
    """Points fds 1 and 2 at ``sink`` so that output from C++ code is captured too."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    try:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
