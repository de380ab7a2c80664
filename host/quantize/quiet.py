"""Keeps the runtimes' own chatter out of the user's terminal while we prepare and quantize.

ONNX Runtime logs from C++ straight to file descriptor 2, its quantization tools use the root
``logging`` logger and ``print``, and onnx emits Python warnings. None of it is for the user unless
they asked for ``--debug``; what was captured is passed on to the ``qbench.host.quantize`` logger at
DEBUG level so it is not lost.

File descriptors, ``sys.stdout`` and the root logger belong to the whole process, and ``compare``
quantizes and analyses in one thread per device. So the silence is one shared state, counted: the
first block to enter redirects, the last to leave restores and logs what was captured. Saving and
restoring per block instead lets two overlapping blocks restore each other's sinks, which left a
process writing its report table, or its error line, into a closed temporary file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from typing import Iterator, Optional

log = logging.getLogger("qbench.host.quantize")

_ORT_WARNING = 2  # onnxruntime's default severity; there is no getter to read the current one
_ORT_ERROR = 3


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Silence:
    """What one silenced window replaced, to put back when it ends."""

    def __init__(self) -> None:
        import onnxruntime

        self._ort = onnxruntime
        root = logging.getLogger()
        self.handlers, self.level = root.handlers[:], root.level
        self.capture = _Capture()
        root.handlers = [self.capture]
        root.setLevel(logging.DEBUG)
        onnxruntime.set_default_logger_severity(_ORT_ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.sink = tempfile.TemporaryFile(mode="w+b")
        self.fds = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in self.fds:
            os.dup2(self.sink.fileno(), fd)
        self.streams = (sys.stdout, sys.stderr)
        self.py_out, self.py_err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = self.py_out, self.py_err

    def end(self) -> None:
        sys.stdout, sys.stderr = self.streams
        for fd, copy in self.fds.items():
            os.dup2(copy, fd)
            os.close(copy)
        self.sink.seek(0)
        output = self.py_out.getvalue() + self.py_err.getvalue() + self.sink.read().decode("utf-8", "replace")
        self.sink.close()
        self.warnings.__exit__(None, None, None)
        self._ort.set_default_logger_severity(_ORT_WARNING)
        root = logging.getLogger()
        root.handlers = self.handlers
        root.setLevel(self.level)
        for record in self.capture.records:
            log.debug("[%s] %s", record.name, record.getMessage())
        if output.strip():
            log.debug("runtime output:\n%s", output.rstrip())


_lock = threading.Lock()
_depth = 0
_silence: Optional[_Silence] = None


@contextlib.contextmanager
def quiet_runtime(debug: bool = False) -> Iterator[None]:
    """Silences ONNX Runtime, onnx and their Python logging for the duration of the block.

    Output of other threads written meanwhile is captured too (file descriptors are process-wide).

    Args:
        debug: when True nothing is silenced (the user asked to see everything).
    """
    global _depth, _silence
    if debug:
        yield
        return
    with _lock:
        if _depth == 0:
            _silence = _Silence()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _silence is not None:
                _silence, ending = None, _silence
                ending.end()
