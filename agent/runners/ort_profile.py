"""Reading ONNX Runtime's profiler output (Chrome trace JSON) into per-op kernel times.

ORT writes one event per kernel call: ``cat == "Node"``, ``name`` ending in
``_kernel_time``, ``dur`` in microseconds, ``args.op_name`` and ``args.provider``.
Each ``InferenceSession.run`` is one ``cat == "Session"``, ``name == "model_run"``
event; kernel events that start before the run kept first are dropped, and each other one belongs to
the last run that started before it.
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

from .base import OpTime, ProfilingUnavailable, op_times

KERNEL_SUFFIX = "_kernel_time"


def summarize(events: Sequence[dict[str, Any]], skip_runs: int = 1) -> list[OpTime]:
    """Per (op type, provider) kernel times over every run after the first ``skip_runs``.

    Raises:
        ProfilingUnavailable: the trace does not have more than ``skip_runs`` runs.
    """
    starts = sorted(float(e["ts"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) <= skip_runs:
        raise ProfilingUnavailable(
            f"the ONNX Runtime profile has {len(starts)} model_run event(s), needs more than {skip_runs}")
    kept = starts[skip_runs:]
    kernels = []
    for e in events:
        ts = float(e.get("ts", -1))
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX) and ts >= kept[0]:
            args = e.get("args") or {}
            run = bisect.bisect_right(kept, ts) - 1  # the last run started at or before the kernel
            kernels.append((str(args.get("op_name") or "?"), str(args.get("provider") or "?"), float(e["dur"]), run))
    return op_times(kernels, len(kept))
