"""The SQLite results store on real files: round trip, concurrent writers, interrupted writes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import platformdirs
import pytest

from qbench.host.errors import UserError
from qbench.host.store import ResultsStore, default_db_path
from reportdata import make_report

WORKERS = 4
RUNS_PER_WORKER = 8
LAYERS = 30
BIG = 400


def _counts(path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(path) as conn:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("runs", "layers", "outputs"))


def test_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "nested" / "results.sqlite")
    report = make_report(n_layers=LAYERS)
    run_id = store.record(report, report_path=tmp_path / "report.json")
    assert store.get(run_id) == report
    row = store.row(run_id)
    assert (row.model_name, row.device_name, row.status) == ("resnet_tiny.onnx", "local", "ok")
    assert row.output_psnr_db == report["summary"]["output_psnr_db"]
    assert row.speedup == report["latency"]["speedup"]
    assert row.int8_peak_mb == report["memory"]["int8"]["peak_mb"]
    assert (row.n_layers, row.n_drops, row.n_unmatched) == (LAYERS, len(report["summary"]["drops"]), 1)
    assert row.report_path == str((tmp_path / "report.json").resolve())
    layers = store.layers(run_id)
    assert [layer["name"] for layer in layers] == [layer["name"] for layer in report["layers"]]
    assert [layer["psnr_db"] for layer in layers] == [layer["psnr_db"] for layer in report["layers"]]
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_history_filters_newest_first(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    first = store.record(make_report(model_path="/m/a.onnx", device="local"))
    second = store.record(make_report(model_path="/m/b.onnx", device="rpi5"))
    third = store.record(make_report(model_path="/m/a.onnx", device="rpi5"))
    assert [row.id for row in store.history()] == [third, second, first]
    assert [row.id for row in store.history(model="a.onnx")] == [third, first]
    assert [row.id for row in store.history(model="/m/b.onnx")] == [second]
    assert [row.id for row in store.history(model="ABAB")] == [third, second, first]  # sha256 prefix
    assert [row.id for row in store.history(device="rpi5")] == [third, second]
    assert [row.id for row in store.history(model="a.onnx", device="rpi5")] == [third]
    assert [row.id for row in store.history(device="x86_64", limit=1)] == [third]
    assert store.history(model="missing.onnx") == []


def test_unknown_run_and_bad_input_are_user_errors(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    with pytest.raises(UserError, match="no run 7"):
        store.get(7)
    with pytest.raises(UserError, match="not a qbench report"):
        store.record({"schema": "something/else"})
    with sqlite3.connect(store.path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(UserError, match="newer qbench"):
        ResultsStore(store.path).history()


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("QBENCH_DB", str(tmp_path / "env.sqlite"))
    assert default_db_path() == tmp_path / "env.sqlite"
    monkeypatch.delenv("QBENCH_DB")
    assert default_db_path() == Path(platformdirs.user_data_dir("qbench")) / "results.sqlite"


def _writer(path: str, worker: int, start: multiprocessing.Event) -> None:
    store = ResultsStore(path)
    # Big enough that transactions overlap in time and writers must wait on each other.
    reports = [make_report(n_layers=BIG, seed=i, device=f"w{worker}-{i}") for i in range(RUNS_PER_WORKER)]
    start.wait(30)
    for report in reports:
        store.record(report)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "results.sqlite"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), worker, start)) for worker in range(WORKERS)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    total = WORKERS * RUNS_PER_WORKER
    assert _counts(path) == (total, total * BIG, total * 2)
    devices = {row.device_name for row in ResultsStore(path).history()}
    assert devices == {f"w{w}-{i}" for w in range(WORKERS) for i in range(RUNS_PER_WORKER)}
    for row in ResultsStore(path).history():
        assert len(ResultsStore(path).layers(row.id)) == BIG


def test_error_inside_the_transaction_leaves_nothing(tmp_path):
    store = ResultsStore(tmp_path / "results.sqlite")
    kept = store.record(make_report(n_layers=LAYERS, device="kept"))
    report = make_report(n_layers=LAYERS, device="broken")
    report["layers"][LAYERS // 2]["psnr_db"] = "not a number"
    with pytest.raises(ValueError):
        store.record(report)
    assert _counts(store.path) == (1, LAYERS, 2)
    assert [row.id for row in store.history()] == [kept]


class _StallingLayer(dict):
    """A layer whose name takes forever to read: the writer stalls mid-transaction."""

    marker: str = ""

    def __getitem__(self, key):
        if key == "name":
            Path(self.marker).write_text("inside the transaction")
            time.sleep(600)
        return super().__getitem__(key)


def _stalling_writer(path: str, marker: str) -> None:
    report = make_report(n_layers=LAYERS, device="killed")
    stalling = _StallingLayer(report["layers"][LAYERS // 2])
    stalling.marker = marker
    report["layers"][LAYERS // 2] = stalling
    ResultsStore(path).record(report)


def test_killed_writer_leaves_no_half_record(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).record(make_report(n_layers=LAYERS, device="before"))
    marker = tmp_path / "marker"
    proc = multiprocessing.get_context("spawn").Process(target=_stalling_writer, args=(str(path), str(marker)))
    proc.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.is_alive():
        time.sleep(0.05)
    assert marker.exists(), "the writer never reached its transaction"
    # Half the layers are in the (uncommitted) transaction now; kill -9 mid-write.
    proc.kill()
    proc.join(30)
    assert proc.exitcode is not None and proc.exitcode < 0
    assert _counts(path) == (1, LAYERS, 2)
    store = ResultsStore(path)
    assert [row.device_name for row in store.history()] == ["before"]
    after = store.record(make_report(n_layers=LAYERS, device="after"))
    assert store.row(after).device_name == "after"
    assert _counts(path) == (2, 2 * LAYERS, 4)
