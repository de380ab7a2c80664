"""Progress bars of `run` and `compare`: one per stage, with its step, count and unit.

A stage (``prepare``, ``upload``, ``timing float``, ``capture``...) shows a pulsing bar and no
count until a step reports a total: a bar never shows a count it does not know (``0/?``). The
agent's steps report totals known from their start (runs planned, layers to capture, bytes to
send), so a count only moves forward.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

#: what a step counts; ``upload`` counts bytes, shown in MB
UNITS = {"upload": "MB", "timing": "runs", "profile": "runs", "capture": "layers", "evaluate": "models"}


def bar_label(stage: str, step: str) -> str:
    """``stage``, or ``stage: step`` when the step's name says more than the stage's (not ``upload (upload)``)."""
    if not step or set(step.split()) <= set(stage.split()):
        return stage
    return f"{stage}: {step}"


def bar_fields(stage: str, step: str, done: int, total: int, prefix: str = "") -> dict[str, Any]:
    """``Progress.update`` arguments for a step's progress: total 0 is unknown (a pulsing bar, no count).
    ``prefix``: what the description starts with (compare: the target's label)."""
    return {"description": escape(prefix + bar_label(stage, step)), "completed": done, "total": total or None,
            "unit": UNITS.get(step, "")}


class CountColumn(ProgressColumn):
    """``done/total unit`` when the total is known, nothing when it is not."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        unit = task.fields.get("unit", "")
        if unit == "MB":
            return Text(f"{task.completed / 2**20:.1f}/{task.total / 2**20:.1f} MB", style="progress.download")
        return Text(f"{task.completed:.0f}/{task.total:.0f} {unit}".rstrip(), style="progress.download")


def new_display(console: Console) -> Progress:
    """A transient display on ``console``: description, bar, count, time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), CountColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
