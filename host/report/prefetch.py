"""Report work that needs only the two model files, started while the device measures.

During the capture stage the host waits for the agent. ``start`` spends that time on the weight
figures (``compare.weights``: they depend on the model files alone), on the int8 model's kernel
analysis (``state.int8_kernels``: a host ONNX Runtime session of it, 0.3-0.7 s) and on loading the
HTML writer (importing plotly and building a first figure take a few tenths of a second). None of it
overlaps the timing runs, which come before the capture.
``start_on_progress`` starts it once the agent reports progress: started with the request, its
work (the interpreter lock, a core) delayed the request and its input samples by 20-50 ms.
``weight_table`` hands the figures to the report when they are for the run's files, else computes
them there and then: the numbers are the same either way.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..compare import weights
from ..formats import FORMATS
from ..run_state import RunState


@dataclass(frozen=True)
class Prefetch:
    """Work started by ``start``.

    Attributes:
        inputs: (float model path, int8 model path, format) the work is for.
        weights: resolves to their ``weights.WeightTable``, or to the error computing it raised.
    """

    inputs: tuple[str, str, str]
    weights: Future


def start(state: RunState) -> Optional[Prefetch]:
    """Computes the weight figures of the run's models and loads the HTML writer, in a background thread.

    Returns:
        The started work (keep it as ``state.prefetch``), None while the run has no model pair.
    """
    inputs = _inputs(state)
    if inputs is None:
        return None
    future: Future = Future()

    def work() -> None:
        table, error = None, None
        try:
            table = _weight_table(*inputs)
        except BaseException as exc:  # noqa: BLE001 - weight_table() raises it again in the run's thread
            error = exc
        try:
            if state.int8_kernels is not None:
                state.int8_kernels.result()  # its own errors become a note of the run
            _load_html_writer()
        finally:  # resolved last, so that the report's own HTML never overlaps the loading
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(table)

    threading.Thread(target=work, name="qbench-prefetch", daemon=True).start()
    return Prefetch(inputs, future)


def start_on_progress(state: RunState, progress: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
    """``progress``, which also runs :func:`start` (into ``state.prefetch``) on the first message it gets.

    Progress comes once the agent has the request and its worker runs.
    """

    def forward(stage: str, done: int, total: int) -> None:
        if state.prefetch is None:
            state.prefetch = start(state)
        progress(stage, done, total)

    return forward


def weight_table(state: RunState) -> Optional[weights.WeightTable]:
    """The weight figures of the run's models: ``state.prefetch``'s when it is for them, else computed now.

    Returns:
        None when the run has no model pair.

    Raises:
        Whatever computing the figures raised.
    """
    inputs = _inputs(state)
    if inputs is None:
        return None
    prefetched = state.prefetch
    if prefetched is not None and prefetched.inputs == inputs:
        return prefetched.weights.result()
    return _weight_table(*inputs)


def _inputs(state: RunState) -> Optional[tuple[str, str, str]]:
    if state.float_info is None or state.int8_info is None:
        return None
    return str(state.float_info.path), str(state.int8_info.path), state.float_info.format


def _load_html_writer() -> None:
    try:
        import plotly.graph_objects as go

        from .page import figure_html

        # plotly sets up a figure type's validators on its first use: a throwaway figure does it now
        figure_html(go.Figure(go.Scatter(x=[0.0], y=[0.0])))
    except Exception:  # noqa: BLE001 - only a head start: writing the report meets the same error and reports it
        pass


def _weight_table(float_path: str, int8_path: str, model_format: str) -> weights.WeightTable:
    return FORMATS[model_format].weight_table(Path(float_path), Path(int8_path))
