"""What changed between two runs: the figures behind `qbench diff`.

Pure functions on two report dicts, so the same diff works on stored runs, on
report.json files, and across devices, runtime versions or model versions.
Layers are matched by name; those present in only one run are counted, not
compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

CONTEXT_KEYS = (
    ("device", "name"), ("device", "arch"), ("device", "runtime"), ("device", "runtime_version"),
    ("device", "providers"), ("models.float", "sha256"), ("models.int8", "sha256"), ("", "qbench_version"),
)


@dataclass(frozen=True)
class Change:
    """One figure in both runs.

    Attributes:
        name: What the figure is, e.g. ``"int8 median latency (ms)"``.
        a: Its value in the first run (``None`` if missing).
        b: Its value in the second run.
        delta: ``b - a`` when both are numbers.
        ratio: ``b / a`` when both are numbers and ``a`` is not zero.
    """

    name: str
    a: Any
    b: Any
    delta: Optional[float] = None
    ratio: Optional[float] = None


@dataclass(frozen=True)
class LayerMove:
    """A layer whose PSNR differs between the runs.

    ``a_db``/``b_db`` are ``None`` for an exact (error-free) layer; ``delta_db``
    is ``None`` when exactly one side is exact, and such layers rank first.
    """

    name: str
    op_type: Optional[str]
    a_db: Optional[float]
    b_db: Optional[float]
    delta_db: Optional[float]


@dataclass(frozen=True)
class RunDiff:
    """Everything `qbench diff` shows."""

    context: list[Change]
    latency: list[Change]
    memory: list[Change]
    outputs: list[Change]
    layers_moved: list[LayerMove]
    layers_only_a: list[str] = field(default_factory=list)
    layers_only_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def diff_reports(a: Mapping[str, Any], b: Mapping[str, Any], top: int = 10) -> RunDiff:
    """Compare two ``qbench.report/1`` reports.

    Args:
        a: The earlier (baseline) report.
        b: The later report.
        top: How many layers to keep, those whose PSNR moved most.

    Returns:
        The changes, ``b`` relative to ``a``.
    """
    names_a, names_b = _names(a), _names(b)
    return RunDiff(
        context=[change for change in _context(a, b) if change.a != change.b],
        latency=_latency(a, b),
        memory=_memory(a, b),
        outputs=_outputs(a, b),
        layers_moved=_layers_moved(a, b)[:top],
        layers_only_a=sorted(names_a - names_b),
        layers_only_b=sorted(names_b - names_a),
    )


def _change(name: str, a: Any, b: Any) -> Change:
    if _is_number(a) and _is_number(b):
        return Change(name, a, b, delta=b - a, ratio=(b / a) if a else None)
    return Change(name, a, b)


def _get(report: Mapping[str, Any], path: str, key: str) -> Any:
    node: Any = report
    for part in filter(None, path.split(".")):
        node = (node or {}).get(part)
    value = (node or {}).get(key)
    return ",".join(value) if isinstance(value, list) else value


def _context(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    return [_change(f"{path or 'report'}.{key}", _get(a, path, key), _get(b, path, key))
            for path, key in CONTEXT_KEYS]


def _latency(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    changes = []
    for model in ("float", "int8"):
        for stat in ("median_ms", "p90_ms", "init_ms"):
            changes.append(_change(f"{model} {stat}", _get(a, f"latency.{model}", stat),
                                   _get(b, f"latency.{model}", stat)))
    changes.append(_change("speedup", _get(a, "latency", "speedup"), _get(b, "latency", "speedup")))
    return changes


def _memory(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    changes = [_change(f"{model} peak_mb", _get(a, f"memory.{model}", "peak_mb"), _get(b, f"memory.{model}", "peak_mb"))
               for model in ("float", "int8")]
    changes.append(_change("memory ratio", _get(a, "memory", "ratio"), _get(b, "memory", "ratio")))
    return changes


def _outputs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    changes = [_change("output PSNR (min, dB)", _get(a, "summary", "output_psnr_db"),
                       _get(b, "summary", "output_psnr_db"))]
    outputs_a = {o["name"]: o for o in a.get("outputs") or []}
    outputs_b = {o["name"]: o for o in b.get("outputs") or []}
    for name in [n for n in outputs_a if n in outputs_b]:
        changes.append(_change(f"{name} PSNR (dB)", _output_figure(outputs_a[name]), _output_figure(outputs_b[name])))
    return changes


def _output_figure(output: Mapping[str, Any]) -> Any:
    if output.get("psnr_db") is not None:
        return output["psnr_db"]
    if output.get("kind") == "exact":
        return "identical" if output.get("exact") else f"{output.get('mismatches', '?')} mismatches"
    return "exact" if output.get("exact") else None


def _layers_moved(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[LayerMove]:
    layers_a = {layer["name"]: layer for layer in a.get("layers") or []}
    moves = []
    for layer in b.get("layers") or []:
        before = layers_a.get(layer["name"])
        if before is None:
            continue
        a_db, b_db = before.get("psnr_db"), layer.get("psnr_db")
        if a_db is None and b_db is None:
            continue
        delta = b_db - a_db if a_db is not None and b_db is not None else None
        if delta == 0:
            continue
        moves.append(LayerMove(layer["name"], layer.get("op_type"), a_db, b_db, delta))
    # Exactness gained or lost outranks any finite move.
    return sorted(moves, key=lambda m: float("inf") if m.delta_db is None else abs(m.delta_db), reverse=True)


def _names(report: Mapping[str, Any]) -> set[str]:
    return {layer["name"] for layer in report.get("layers") or []}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
