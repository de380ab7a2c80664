"""Errors the CLI turns into one line on stderr and a non-zero exit; the Python API raises them as they are."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input or an unreachable device: the message is the whole story for the user."""


class RunFailed(UserError):
    """A stage failed on the way (a device that dropped off, a model the runtime refused).

    Attributes:
        result: what was measured until then: the partial report (Python API: a
            :class:`~qbench.host.report.typed.Report`, or the whole comparison of ``compare``).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
