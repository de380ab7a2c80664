"""Model outputs a benchmark returns on request (``BenchmarkRequest.return_outputs``).

After timing, the worker runs every sample once more and saves each model output
stacked along a leading sample axis as ``JOBDIR/out_<k>.npy``, their names in
``JOBDIR/outputs.json``; the agent reads them back before it removes the job
directory and sends them as the reply's tensor frames. Outputs that cannot travel
(too large for one frame, a dtype the wire does not carry, a shape that changes
between samples) are not sent at all, and the reply says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from qbench.protocols.codec import WIRE_DTYPES

from .runners.base import Runner

NAMES_FILE = "outputs.json"


def save_outputs(runner: Runner, feeds: Sequence[Mapping[str, np.ndarray]], jobdir: Path,
                 max_frame_bytes: int) -> str | None:
    """Run each feed once and save the stacked outputs in ``jobdir``.

    Args:
        runner: the loaded runner that was timed (so the outputs are the timed session's).
        feeds: one feed per sample, inputs already checked.
        jobdir: the job directory, read by :func:`load_outputs`.
        max_frame_bytes: the agent's frame cap; 0 means no cap.

    Returns:
        None when saved, else why the outputs are not returned (nothing is saved then).
    """
    first = runner.infer_unchecked(feeds[0])
    for name, array in first.items():
        if array.dtype.name not in WIRE_DTYPES:
            return f"output {name!r} has dtype {array.dtype}, which the wire does not carry"
        stacked_bytes = array.nbytes * len(feeds)
        if max_frame_bytes and stacked_bytes > max_frame_bytes:
            return (f"output {name!r} is {stacked_bytes} bytes for {len(feeds)} samples, over the agent's "
                    f"frame cap of {max_frame_bytes} bytes; use fewer samples")
    stacked = {name: np.empty((len(feeds), *a.shape), dtype=a.dtype) for name, a in first.items()}
    for i, feed in enumerate(feeds):
        # Runners may reuse their output buffers: assigning into `stacked` copies.
        for name, array in (first if i == 0 else runner.infer_unchecked(feed)).items():
            if array.shape != stacked[name].shape[1:]:
                return f"output {name!r} changes shape between samples ({stacked[name].shape[1:]} vs {array.shape})"
            stacked[name][i] = array
    for k, array in enumerate(stacked.values()):
        np.save(jobdir / f"out_{k}.npy", array, allow_pickle=False)
    (jobdir / NAMES_FILE).write_text(json.dumps(list(stacked)))
    return None


def load_outputs(jobdir: Path) -> tuple[list[np.ndarray], list[str]]:
    """The outputs :func:`save_outputs` left in ``jobdir``, in model order, and their names (empty if none)."""
    path = jobdir / NAMES_FILE
    if not path.exists():
        return [], []
    names = [str(name) for name in json.loads(path.read_text())]
    return [np.load(jobdir / f"out_{k}.npy", allow_pickle=False) for k in range(len(names))], names
