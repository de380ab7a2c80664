"""Output-only trials on the device: one agent, started once, for a whole sweep or search.

:class:`Evaluator` starts the agent, uploads the float reference once and then measures candidate
int8 models by their outputs alone (``evaluate_request``: one worker per call, however many
candidates; every candidate is uploaded by content, so one the agent has is never sent again).
It can also time a candidate (``benchmark_request``) for the figures a Pareto table needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qbench.protocols.messages import (
    NONFINITE_OUTPUT, BenchmarkRequest, EvaluateRequest, ModelEvaluation, RunnerConfig, StructureRequest, TimingConfig,
)

from .compare import verdicts
from .errors import UserError
from .models import inspect_model
from .transport import stopping
from .transport.base import AgentTransport, TransportError
from .transport.client import AgentClient, AgentError, ProgressFn


@dataclass
class Figures:
    """One candidate's output error: the lowest output PSNR (``inf`` when exact), the lowest SQNR, and
    the output verdicts the report would give (:mod:`qbench.host.compare.verdicts`).

    Attributes:
        psnr_db: min over outputs of 10·log10(peak² / MSE), pooled over samples; ``inf`` if every output
            is exact; ``-inf`` if an output holds NaN or infinity; None when the candidate failed (``error``).
        sqnr_db: min over outputs of 10·log10(Σf² / Σ(f − q)²).
        outputs: the agent's per-output figures (``OutputError`` as dicts), each with its ``verdict``
            and ``reasons``.
        error: why the candidate has no figures.
        verdict: the worst output verdict (``ok``, ``degraded``, ``broken``); None without figures.
        top1: the lowest top-1 agreement of the outputs read by argmax (CTC: sequence agreement), as
            the report's ``summary.top1_agreement``; None when no output is read by argmax.
    """

    psnr_db: float | None
    sqnr_db: float | None
    outputs: list[dict[str, Any]]
    error: str | None = None
    verdict: str | None = None
    top1: float | None = None

    @classmethod
    def of(cls, result: ModelEvaluation) -> "Figures":
        """The figures of one candidate. An output holding NaN or infinity is measured, not failed: its PSNR
        and SQNR are -inf and it is broken (magika's LayerNorm alone in int8 takes a variance below 0)."""
        outputs = [dict(vars(o)) for o in result.outputs]
        broken = [o for o in result.outputs if o.error and o.error != NONFINITE_OUTPUT]
        if result.error or broken:
            return cls(None, None, outputs, result.error or f"{broken[0].name}: {broken[0].error}")
        nonfinite = {o.name for o in result.outputs if o.error == NONFINITE_OUTPUT}

        def figures(attr: str) -> list[float]:  # -inf when non-finite, inf when exact, none when undefined
            return [-math.inf if o.name in nonfinite else math.inf if o.mse == 0 else getattr(o, attr)
                    for o in result.outputs if getattr(o, attr) is not None or o.mse == 0 or o.name in nonfinite]

        psnr, sqnr = figures("psnr_db"), figures("sqnr_db")
        for entry, o in zip(outputs, result.outputs):
            entry.pop("structure", None)
            if o.name in nonfinite:
                entry["verdict"], entry["reasons"] = "broken", ["NaN or infinity in the output"]
                continue
            judged = {"kind": "float", "sqnr_db": o.sqnr_db, "exact": o.mse == 0,
                      **verdicts.structure_figures(o.structure)}
            entry["verdict"], entry["reasons"] = verdicts.judge(judged)
            entry.update({k: judged[k] for k in ("top1_agreement", "sequence_agreement", "decision_f1") if k in judged})
        top1 = min((a for a in map(verdicts.agreement, outputs) if a is not None), default=None)
        return cls(min(psnr) if psnr else None, min(sqnr) if sqnr else None, outputs,
                   verdict=verdicts.worst(o["verdict"] for o in outputs), top1=top1)


class Evaluator:
    """A started agent with the float reference uploaded; use as a context manager.

    Args:
        transport: a fresh, not yet started transport to the device.
        reference: the float model every candidate is compared with.
        inputs: the evaluation samples, ``{input: (N, *shape)}``.
        runner: how the agent builds sessions.
        timeout_s: the longest silence from the agent.
        progress: progress lines for the user.
        structure: what the agent measures of each output's structure, by output name (the verdicts'
            and top-1 figures); none: PSNR and SQNR only.
    """

    def __init__(self, transport: AgentTransport, reference: Path, inputs: dict[str, np.ndarray],
                 runner: RunnerConfig, timeout_s: float = 60.0, progress: ProgressFn | None = None,
                 structure: dict[str, StructureRequest] | None = None) -> None:
        self.structure = dict(structure or {})
        self.transport = transport
        self.reference = Path(reference)
        self.format = inspect_model(self.reference).format
        self.inputs = inputs
        self.runner = runner
        self.timeout_s = timeout_s
        self.progress = progress
        self.client: AgentClient | None = None
        self._reference_ref = None
        self.trials = 0

    def __enter__(self) -> "Evaluator":
        stopping.wait_stopped()
        try:
            self.client = AgentClient(self.transport.start([self.runner.runtime]), timeout_s=self.timeout_s)
            self.client.hello([self.runner.runtime])
            self._reference_ref = self.client.ensure_model(self.reference, self.format)
        except (AgentError, TransportError) as exc:
            self.__exit__()
            raise UserError(f"could not start the agent: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            try:
                self.client.shutdown()
            except AgentError:
                pass  # the transport stops it anyway
            self.client.close()
            self.client = None
        self.transport.stop()

    def evaluate(self, models: Sequence[Path]) -> list[Figures]:
        """The output figures of each of ``models`` (int8 candidates of the reference), in one agent worker."""
        if not models:
            return []
        client = self._client()
        refs = [client.ensure_model(Path(m), self.format) for m in models]
        req = EvaluateRequest(reference=self._reference_ref, models=refs, runner=self.runner, structure=self.structure)
        try:
            reply = client.evaluate(req, self.inputs, self.progress)
        except AgentError as exc:
            raise UserError(f"evaluate on the device failed: {exc}") from exc
        self.trials += len(models)
        return [Figures.of(r) for r in reply.results]

    def latency_ms(self, model: Path, timing: TimingConfig) -> float:
        """The median latency of ``model`` on the device (``benchmark_request``, no outputs, no profile)."""
        client = self._client()
        ref = client.ensure_model(Path(model), self.format)
        try:
            reply = client.benchmark(BenchmarkRequest(model=ref, runner=self.runner, timing=timing), self.inputs,
                                     self.progress)
        except AgentError as exc:
            raise UserError(f"timing on the device failed: {exc}") from exc
        return reply.latency.median_ms

    def _client(self) -> AgentClient:
        if self.client is None:
            raise RuntimeError("Evaluator used outside its `with` block")
        return self.client


