"""Weight figures computed early in a background thread (report/prefetch.py) are the report's own."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest

from models import build_convnet
from qbench.host.formats import FORMATS
from qbench.host.models import inspect_model
from qbench.host.quantize.onnx import quantize_onnx
from qbench.host.report import prefetch
from qbench.host.report.diagnosis import add_diagnosis
from qbench.host.run_state import RunSettings, RunState

LAYERS = ["x", "relu1", "relu2", "add", "conv3", "gap", "flat", "probs"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pair")
    model = build_convnet(tmp / "convnet.onnx")
    calibration = {"x": np.random.default_rng(3).normal(size=(6, 1, 3, 16, 16)).astype(np.float32)}
    return model, quantize_onnx(model, tmp / "int8.onnx", calibration)


def _state(tmp_path, model, int8) -> RunState:
    state = RunState(RunSettings(model=model, out_dir=tmp_path))
    state.float_info, state.int8_info = inspect_model(model), inspect_model(int8)
    return state


def _report(layers: list[str]) -> dict:
    return {"layers": [{"name": name, "op_type": "Conv", "psnr_db": 30.0} for name in layers]}


@pytest.mark.parametrize("layers", [LAYERS, []])  # [] : a run whose capture failed has no layers
def test_prefetched_figures_equal_those_computed_at_report_time(tmp_path, pair, layers):
    state = _state(tmp_path, *pair)
    state.prefetch = prefetch.start(state)
    early = _report(layers)
    add_diagnosis(early, state)
    entries, unmatched = FORMATS["onnx"].weight_table(*pair).for_layers(layers)
    assert early["weights"] == entries and unmatched == []
    assert [e["layer"] for e in entries] == (["relu1", "relu2", "conv3"] if layers else [None] * 3)
    late = _report(layers)
    add_diagnosis(late, _state(tmp_path, *pair))  # no prefetch: computed here
    assert late == early


def test_a_failure_in_the_thread_is_the_report_s_weights_error(tmp_path, pair):
    model, int8 = pair
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(int8.read_bytes())
    prefetched, direct = _state(tmp_path, model, broken), _state(tmp_path, model, broken)
    broken.write_bytes(b"no longer a model")
    prefetched.prefetch = prefetch.start(prefetched)
    reports = []
    for state in (prefetched, direct):
        reports.append(_report(LAYERS))
        add_diagnosis(reports[-1], state)
    assert "weights" not in reports[0] and reports[0]["weights_error"]
    assert reports[0]["weights_error"] == reports[1]["weights_error"]


def test_figures_prefetched_for_other_files_are_not_used(tmp_path, pair):
    state = _state(tmp_path, *pair)
    stale: Future = Future()
    stale.set_exception(RuntimeError("figures of other files"))
    state.prefetch = prefetch.Prefetch(("other.onnx", "other.int8.onnx", "onnx"), stale)
    report = _report(LAYERS)
    add_diagnosis(report, state)
    assert "weights_error" not in report and len(report["weights"]) == 3
    state.prefetch = prefetch.Prefetch(prefetch.start(state).inputs, stale)  # the run's files: used
    report = _report(LAYERS)
    add_diagnosis(report, state)
    assert report["weights_error"] == "RuntimeError: figures of other files"


def test_nothing_to_prefetch_before_the_models_are_known(tmp_path, pair):
    state = RunState(RunSettings(model=pair[0], out_dir=tmp_path))
    assert prefetch.start(state) is None


def test_started_by_the_first_progress_message_which_is_passed_on(tmp_path, pair):
    state = _state(tmp_path, *pair)
    seen = []
    progress = prefetch.start_on_progress(state, lambda *args: seen.append(args))
    assert state.prefetch is None  # nothing runs while the request is being sent
    progress("capture", 0, 2)
    started = state.prefetch
    assert started is not None and started.inputs == (str(pair[0]), str(pair[1]), "onnx")
    progress("capture", 2, 2)
    assert state.prefetch is started and seen == [("capture", 0, 2), ("capture", 2, 2)]
    assert len(started.weights.result(timeout=60).entries) == 3
