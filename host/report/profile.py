"""report.json ``profile``: the per-op kernel times the agent measured for each model."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from qbench.protocols.messages import BenchmarkReply


def profile_section(profile_runs: int, benchmarks: Mapping[str, BenchmarkReply]) -> Optional[dict[str, Any]]:
    """``{"float": [...], "int8": [...], "runs": N}`` plus ``notes`` {model: why empty}; None when not asked.

    Each entry: ``op_type``, ``provider``, ``total_ms`` (over the ``runs`` profiled runs),
    ``calls``, ``mean_ms`` (per run) and ``share`` (of the model's summed kernel time).
    """
    if profile_runs <= 0 or not benchmarks:
        return None
    section: dict[str, Any] = {kind: list(reply.profile) for kind, reply in benchmarks.items()}
    section["runs"] = profile_runs
    notes = {kind: reply.profile_note for kind, reply in benchmarks.items() if reply.profile_note}
    if notes:
        section["notes"] = notes
    return section
