"""What ``qbench fix`` must reach: output PSNR, top-1 agreement, and no broken output verdict.

A trial is judged by its :class:`~qbench.host.evaluator.Figures` (the agent's output-only
measurement), the verifying run by its report's summary: the same three figures, computed the same
way (:mod:`qbench.host.compare.verdicts`), so a trial that meets the target should give a report that does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .evaluator import Figures
from .trials import output_psnr


@dataclass(frozen=True)
class Target:
    """What a repaired model must reach: the output PSNR, the top-1 agreement of the outputs read by
    argmax (as the ``--fail-under-top1`` gate reads it), or both; and no output verdict ``broken``.

    Attributes:
        psnr_db: the lowest output PSNR to reach, dB; None: not a criterion.
        top1: the lowest top-1 agreement (0..1; CTC outputs: sequence agreement); None: not a criterion.
    """

    psnr_db: float | None = None
    top1: float | None = None

    @classmethod
    def of(cls, psnr_db: float | None, top1: float | None) -> "Target":
        """The target of ``--target-psnr`` and ``--target-top1``.

        Raises:
            UserError: neither given, or a top-1 agreement outside 0..1.
        """
        if psnr_db is None and top1 is None:
            raise UserError("give a target: --target-psnr DB, --target-top1 SHARE, or both")
        if top1 is not None and not 0.0 <= top1 <= 1.0:
            raise UserError(f"--target-top1 is a share of positions, 0..1, not {top1!r}")
        return cls(psnr_db, top1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Target":
        return cls(data.get("psnr_db"), data.get("top1"))

    def to_dict(self) -> dict[str, Any]:
        return {"psnr_db": self.psnr_db, "top1": self.top1, "not_broken": True}

    def text(self) -> str:
        parts = [f"{self.psnr_db:g} dB"] if self.psnr_db is not None else []
        parts += [f"top-1 {self.top1:g}"] if self.top1 is not None else []
        return " and ".join(parts) + ", no broken output"

    def met_figures(self, figures: Figures) -> bool:
        return figures.error is None and self._met(figures.psnr_db, figures.top1, figures.verdict)

    def met_report(self, report: dict[str, Any]) -> bool:
        summary = report.get("summary") or {}
        return self._met(output_psnr(report), summary.get("top1_agreement"), summary.get("verdict"))

    def _met(self, psnr: float | None, top1: float | None, verdict: str | None) -> bool:
        if verdict == "broken":
            return False
        if self.psnr_db is not None and (psnr is None or psnr < self.psnr_db):
            return False
        return self.top1 is None or (top1 is not None and top1 >= self.top1)

    def predicted_met(self, predicted_psnr_db: float) -> bool:
        """Whether a predicted output PSNR meets the target (a top-1 target is never predicted)."""
        return self.psnr_db is not None and self.top1 is None and predicted_psnr_db >= self.psnr_db
