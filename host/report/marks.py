"""Which of a run's headline figures are bad or doubtful: the level report.html marks each with, and why.

Levels (the README's "report.html" section has the same table):

* ``bad``: a failed gate; a speedup below 1.0 (the int8 model is slower than the float one); an output PSNR
  below :data:`~qbench.host.report.exports.RED_BELOW_DB`; an output verdict ``broken``; a non-finite output.
* ``warn``: an output PSNR below :data:`~qbench.host.report.exports.AMBER_BELOW_DB`; an output verdict
  ``degraded``.

A mark is never colour alone: it carries a symbol and a few words, so it reads in print and for colour-blind
readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from qbench.host.report.exports import AMBER_BELOW_DB, RED_BELOW_DB

BAD, WARN = "bad", "warn"
SYMBOLS = {BAD: "\u2718", WARN: "\u26a0"}  # heavy ballot x, warning sign
_ORDER = {None: 0, WARN: 1, BAD: 2}


@dataclass(frozen=True)
class Mark:
    """A figure's level (:data:`BAD` or :data:`WARN`) and the words shown beside it."""

    level: str
    why: str

    @property
    def text(self) -> str:
        """Symbol and words, e.g. ``✘ int8 slower than float``."""
        return f"{SYMBOLS[self.level]} {self.why}"


def worst(*marks: Optional[Mark]) -> Optional[Mark]:
    """The most severe of some marks (the first of equals); None when none is set."""
    return max(marks, key=lambda m: _ORDER[m.level if m else None], default=None) if any(marks) else None


def speedup(value: Optional[float]) -> Optional[Mark]:
    """``bad`` below 1.0: the int8 model takes longer than the float one."""
    if value is not None and value < 1.0:
        return Mark(BAD, "int8 slower than float")
    return None


def psnr(value: Optional[float]) -> Optional[Mark]:
    """``bad`` below RED_BELOW_DB, ``warn`` below AMBER_BELOW_DB (the dashed lines of the PSNR chart)."""
    if value is None:
        return None
    if value < RED_BELOW_DB:
        return Mark(BAD, f"below {RED_BELOW_DB:g} dB")
    if value < AMBER_BELOW_DB:
        return Mark(WARN, f"below {AMBER_BELOW_DB:g} dB")
    return None


def verdict(value: Optional[str]) -> Optional[Mark]:
    """``bad`` for a broken output, ``warn`` for a degraded one (see the README's "Output verdicts")."""
    return {"broken": Mark(BAD, "broken"), "degraded": Mark(WARN, "degraded")}.get(value or "")


def output(entry: Mapping[str, Any]) -> Optional[Mark]:
    """The worst mark of one ``report["outputs"]`` entry: non-finite, its PSNR, its verdict."""
    if entry.get("nonfinite"):
        return Mark(BAD, "non-finite")
    return worst(psnr(entry.get("psnr_db")), verdict(entry.get("verdict")))


def gate(passed: Optional[bool]) -> Optional[Mark]:
    """``bad`` for a gate that failed; nothing for one that passed or was not set."""
    return Mark(BAD, "gate failed") if passed is False else None
