"""Typed, read-only views of report.json (``qbench.report/1``) and compare.json (``qbench.compare/1``).

The Python API returns these. Each view holds the figures most scripts read as typed fields and the
whole document as it was written (``to_dict()``), so nothing the JSON has is lost. A figure the run did
not measure is None (``latency`` under ``accuracy_only``, ``summary`` of a run that failed before the
capture). Field meanings are report.json's (README, "report.json").

This module imports nothing heavy until a view is saved or loaded (the report builder brings the
session with it): reading figures off a Report needs neither ONNX nor ZeroMQ.
"""

from __future__ import annotations

import builtins
import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

from ..errors import UserError

REPORT_JSON = "report.json"
COMPARE_JSON = "compare.json"

_View = TypeVar("_View")


def _view(cls: type[_View], data: Optional[Mapping[str, Any]]) -> Optional[_View]:
    """``cls`` from the entries of ``data`` that are its fields (lists become tuples); None without data."""
    if data is None:
        return None
    values = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


@dataclass(frozen=True)
class Output:
    """One model output compared between the float and int8 models.

    Attributes:
        name: the output's name.
        kind: ``float`` (compared by PSNR) or ``exact`` (class indices, shapes: element by element).
        psnr_db: int8 vs float PSNR in dB (peak: max |float|); None when exact or undefined.
        sqnr_db: signal to quantization noise ratio in dB.
        exact: every element equal.
        max_abs_error: the largest absolute difference.
        verdict: ``ok``, ``degraded`` or ``broken``; ``reasons`` says why.
        top1_agreement: for outputs read by argmax, the fraction of positions whose argmax agrees.
        decision_f1: for probability outputs (a Sigmoid's), the F1 score of the int8 model's decisions
            value > 0.5 against the float model's; None when neither model decides a positive.
    """

    name: str
    kind: str = "float"
    psnr_db: Optional[float] = None
    sqnr_db: Optional[float] = None
    exact: bool = False
    max_abs_error: Optional[float] = None
    verdict: Optional[str] = None
    reasons: tuple[str, ...] = ()
    top1_agreement: Optional[float] = None
    decision_f1: Optional[float] = None


@dataclass(frozen=True)
class Layer:
    """One float tensor compared with its int8 counterpart, in graph order.

    Attributes:
        index: position in the report's layer list.
        name: the float tensor (the user's model's name).
        op_type: the op that produces it.
        psnr_db, sqnr_db: int8 vs float, in dB; None when exact, unobservable or fused.
        exact: every element equal.
        drop: a sudden drop: its SQNR falls more than ``drop_db`` below its inputs'.
        drop_db: how far below its inputs' its SQNR falls (dB), None without inputs to compare with.
        status: why it has no figures (unobservable, or the kernel that fused it), else None.
        int8_name: its counterpart in the int8 model.
    """

    index: int
    name: str
    op_type: str = ""
    psnr_db: Optional[float] = None
    sqnr_db: Optional[float] = None
    exact: bool = False
    drop: bool = False
    drop_db: Optional[float] = None
    status: Optional[str] = None
    int8_name: Optional[str] = None


@dataclass(frozen=True)
class Timing:
    """One model's timed runs (milliseconds), after ``warmup`` untimed ones."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    runs: int
    warmup: int
    init_ms: Optional[float] = None
    first_ms: Optional[float] = None
    samples_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Latency:
    """Float and int8 latency; ``speedup`` = float median / int8 median (None unless both were timed)."""

    float: Optional[Timing] = None
    int8: Optional[Timing] = None
    speedup: Optional[builtins.float] = None  # builtins: ``float`` is a field here


@dataclass(frozen=True)
class PeakMemory:
    """One model's resident memory in MB: the peak, the baseline before loading, and their difference."""

    peak_mb: float
    baseline_mb: Optional[float] = None
    delta_mb: Optional[float] = None


@dataclass(frozen=True)
class Memory:
    """Float and int8 peak memory; ``ratio`` = int8 peak / float peak."""

    float: Optional[PeakMemory] = None
    int8: Optional[PeakMemory] = None
    ratio: Optional[builtins.float] = None


@dataclass(frozen=True)
class Summary:
    """The run's headline figures.

    Attributes:
        output_psnr_db: the lowest float output's PSNR (dB); None when an output is exact or non-finite.
        outputs_exact: every float output equal.
        verdict: the worst output verdict.
        top1_agreement: the lowest argmax agreement over the outputs read by argmax.
        speedup, memory_ratio: as in :class:`Latency` and :class:`Memory`.
        worst_layers: the layers of lowest PSNR, worst first.
        drops: the layers flagged as sudden drops.
        layers_compared, layers_unobservable, layers_unmatched: layer counts.
        int8_coverage: ONNX: the fraction of convolutions and matmuls run as int8 kernels.
    """

    output_psnr_db: Optional[float] = None
    outputs_exact: bool = False
    verdict: Optional[str] = None
    top1_agreement: Optional[float] = None
    speedup: Optional[float] = None
    memory_ratio: Optional[float] = None
    worst_layers: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()
    layers_compared: int = 0
    layers_unobservable: int = 0
    layers_unmatched: int = 0
    int8_coverage: Optional[float] = None


@dataclass(frozen=True)
class Report:
    """A run's report.json, typed (see the module docstring).

    Attributes:
        status: ``ok``, ``failed`` (``error`` says which stage) or ``interrupted``.
        outputs, layers: the compared outputs and layers (empty before the capture).
        latency, memory: None when not measured.
        summary: None before the capture.
        error: the failed stage's ``stage``, ``code`` and ``message``.
        notes: what the run said along the way (random data, prepared shapes, ...).
        path: the report.json it was written to or loaded from; None when not written.
        run_id: its id in the results database when this call recorded it, else None.
    """

    status: str
    outputs: tuple[Output, ...]
    layers: tuple[Layer, ...]
    latency: Optional[Latency]
    memory: Optional[Memory]
    summary: Optional[Summary]
    error: Optional[Mapping[str, Any]]
    notes: tuple[str, ...]
    path: Optional[Path] = None
    run_id: Optional[int] = None
    _doc: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], path: Optional[Path] = None, run_id: Optional[int] = None) -> "Report":
        """The view of a ``qbench.report/1`` document (kept as a copy)."""
        doc = copy.deepcopy(dict(doc))
        latency, memory = doc.get("latency"), doc.get("memory")
        return cls(
            status=doc.get("status", "ok"),
            outputs=tuple(_view(Output, o) for o in doc.get("outputs") or []),
            layers=tuple(_view(Layer, x) for x in doc.get("layers") or []),
            latency=None if latency is None else Latency(
                _view(Timing, latency.get("float")), _view(Timing, latency.get("int8")), latency.get("speedup")),
            memory=None if memory is None else Memory(
                _view(PeakMemory, memory.get("float")), _view(PeakMemory, memory.get("int8")), memory.get("ratio")),
            summary=_view(Summary, doc.get("summary")),
            error=doc.get("error"),
            notes=tuple(doc.get("notes") or ()),
            path=path, run_id=run_id, _doc=doc,
        )

    @property
    def int8_model(self) -> Optional[Path]:
        """The int8 model that was measured (qbench's own when it quantized), None before it existed."""
        path = ((self._doc.get("models") or {}).get("int8") or {}).get("path")
        return Path(path) if path else None

    @property
    def gate_failures(self) -> list[str]:
        """One line per gate the run failed (the gates it was run with); empty when none or not ok."""
        from qbench.host import gates

        limits = gates.Gates.from_dict(self._doc.get("gates"))
        if self.status != "ok" or not limits.active:
            return []
        return [check.message for check in gates.failures(self._doc, limits)]

    def section(self, name: str) -> Any:
        """Any top-level key of report.json, as written (``calibration``, ``fix``, ``device``, ...); None if absent."""
        return copy.deepcopy(self._doc.get(name))

    def to_dict(self) -> dict[str, Any]:
        """The whole report.json document (a copy)."""
        return copy.deepcopy(dict(self._doc))

    def save(self, folder: Path | str, artifacts: bool = True) -> Path:
        """Writes report.json into ``folder`` (made if missing), and with ``artifacts`` report.html,
        layers.csv and the Model Explorer overlay next to it.

        Returns:
            The report.json written.
        """
        from .artifacts import write_artifacts  # plotly: only when asked for
        from .build import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / REPORT_JSON
        write_json(dict(self._doc), path)
        if artifacts:
            write_artifacts(self._doc, folder)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "Report":
        """Reads a report.json (or the folder holding one).

        Raises:
            UserError: a missing or unreadable file, or one that is not a qbench report.
        """
        from .build import SCHEMA

        return cls.from_dict(*_load(Path(path), REPORT_JSON, SCHEMA))


@dataclass(frozen=True)
class Comparison:
    """compare.json, typed: one float/int8 pair measured on several targets.

    Attributes:
        reports: the report of every target that ran, by target label, in the order given.
        errors: why a target failed, by label (a failed target may still have a partial report).
        table: compare's one table, a row per target (see :func:`qbench.host.report.compare.table`).
        reference: the label of the target the others' outputs are compared with (None if none returned outputs).
        path: the compare.json written or loaded; None when not written.
    """

    reports: Mapping[str, Report]
    errors: Mapping[str, str]
    table: tuple[Mapping[str, Any], ...]
    reference: Optional[str]
    path: Optional[Path] = None
    _doc: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], path: Optional[Path] = None) -> "Comparison":
        doc = copy.deepcopy(dict(doc))
        targets = doc.get("targets") or []
        return cls(
            reports={t["label"]: Report.from_dict(t["report"], _path(t.get("report_path")), t.get("run_id"))
                     for t in targets if t.get("report")},
            errors={t["label"]: t["error"] for t in targets if t.get("error")},
            table=tuple(doc.get("table") or ()), reference=doc.get("reference"), path=path, _doc=doc,
        )

    def to_dict(self) -> dict[str, Any]:
        """The whole compare.json document (a copy)."""
        return copy.deepcopy(dict(self._doc))

    def save(self, folder: Path | str) -> Path:
        """Writes compare.json and compare.html into ``folder`` (made if missing); returns compare.json."""
        from .build import write_json
        from .html import write_compare_html  # plotly: only when asked for

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / COMPARE_JSON
        write_json(dict(self._doc), path)
        write_compare_html(self._doc, folder / "compare.html")
        return path

    @classmethod
    def load(cls, path: Path | str) -> "Comparison":
        """Reads a compare.json (or the folder holding one).

        Raises:
            UserError: a missing or unreadable file, or one that is not a qbench comparison.
        """
        from .compare import SCHEMA

        return cls.from_dict(*_load(Path(path), COMPARE_JSON, SCHEMA))


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


def _load(path: Path, name: str, schema: str) -> tuple[dict[str, Any], Path]:
    if path.is_dir():
        path = path / name
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise UserError(f"{path}: not a {schema} document (schema {found!r})")
    return doc, path
