"""report/json_text.py writes the very text json.dumps writes, report.json and the results database's copy alike."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from qbench.host.report import json_text
from qbench.host.report.build import write_json
from qbench.host.store import ResultsStore
from reportdata import make_report

EDGES = [
    [], {}, 3, "text", None, [1, 2.5], [[]], [[[1, 2]]], [None, 1], [True, 2], (4.0, 5),
    {"a": [1, [2, 3], [], {"b": (4.0, 5)}], "c": [[1], [True, 2]], "d": ["x", "y"]},
    {"k": [1e300, -0.0, 1e-7, 2**70, 0.1 + 0.2], "": {"nested": {"deeper": [3, 4]}}},
    {"numpy scalars": [np.float64(1.5), 2.0], "int keys": {1: [1, 2], 2.5: [3]}},
    {"looks like a placeholder": "\u0000" + "0" * 32 + ":0", "list": [1, 2]},
]


@pytest.mark.parametrize("obj", EDGES)
@pytest.mark.parametrize("indent", [1, 2, 4])
def test_same_text_as_json_dumps(obj, indent):
    assert json_text.dumps(obj, indent) == json.dumps(obj, indent=indent, allow_nan=False)
    assert json_text.encode(obj, indent) == (json.dumps(obj, indent=indent, allow_nan=False),
                                             json.dumps(obj, allow_nan=False))


def test_same_text_on_a_report_with_histograms_and_weights():
    report = make_report(n_layers=60)
    assert sum(len(layer["histogram"]["float"]) for layer in report["layers"]) > 3000
    indented, compact = json_text.encode(report)
    assert indented == json.dumps(report, indent=2, allow_nan=False)
    assert compact == json.dumps(report)


@pytest.mark.parametrize("bad", [[float("nan")], {"a": [1, float("inf")]}, {"a": {"b": [-float("inf"), 2]}}])
def test_nan_and_infinity_are_refused_like_json_dumps(bad):
    with pytest.raises(ValueError):
        json.dumps(bad, indent=2, allow_nan=False)
    with pytest.raises(ValueError):
        json_text.dumps(bad)


def test_report_json_and_the_database_copy(tmp_path):
    report = make_report(n_layers=20)
    indented, compact = json_text.encode(report)
    write_json(report, tmp_path / "given.json", indented)
    write_json(report, tmp_path / "report.json")
    assert (tmp_path / "report.json").read_text() == (tmp_path / "given.json").read_text() == json.dumps(
        report, indent=2, allow_nan=False)
    store = ResultsStore(tmp_path / "results.sqlite")
    given, computed = store.record(report, tmp_path / "report.json", compact), store.record(report)
    with sqlite3.connect(tmp_path / "results.sqlite") as conn:
        texts = [conn.execute("SELECT report_json FROM runs WHERE id = ?", (run,)).fetchone()[0]
                 for run in (given, computed)]
    assert texts == [json.dumps(report)] * 2
    assert store.get(given) == store.get(computed) == report
