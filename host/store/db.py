"""SQLite store of finished runs: what `qbench history` lists and `qbench diff` compares.

One database file, shared by every qbench process of a user (or of a CI job via
``--db``). The file is in WAL mode so readers never block the writer, and each
run goes in with one ``BEGIN IMMEDIATE`` transaction: a process killed
mid-write leaves no trace, and concurrent writers queue on the busy timeout
instead of failing. The whole report is kept as JSON next to the columns that
history and diff query, so nothing a later qbench wants is lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import platformdirs

from qbench.host.errors import UserError

from .redact import redact_settings

SCHEMA_VERSION = 2
REPORT_SCHEMA_PREFIX = "qbench.report/1"
BUSY_TIMEOUT_S = 60.0
DB_ENV = "QBENCH_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    qbench_version TEXT,
    model_name TEXT,
    source_path TEXT,
    float_path TEXT,
    float_sha256 TEXT,
    float_size_bytes INTEGER,
    int8_path TEXT,
    int8_sha256 TEXT,
    int8_size_bytes INTEGER,
    device_name TEXT,
    target TEXT,
    device_arch TEXT,
    device_system TEXT,
    runtime TEXT,
    runtime_version TEXT,
    providers TEXT,
    emulated INTEGER,
    output_psnr_db REAL,
    speedup REAL,
    memory_ratio REAL,
    float_median_ms REAL,
    int8_median_ms REAL,
    float_peak_mb REAL,
    int8_peak_mb REAL,
    n_layers INTEGER NOT NULL,
    n_drops INTEGER NOT NULL,
    n_unmatched INTEGER NOT NULL,
    report_path TEXT,
    device_json TEXT NOT NULL,
    settings_json TEXT NOT NULL,
    summary_json TEXT NOT NULL,
    report_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_model ON runs (model_name);
CREATE INDEX IF NOT EXISTS runs_device ON runs (device_name);
CREATE INDEX IF NOT EXISTS runs_target ON runs (target);
CREATE TABLE IF NOT EXISTS layers (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    layer_index INTEGER NOT NULL,
    name TEXT NOT NULL,
    op_type TEXT,
    psnr_db REAL,
    sqnr_db REAL,
    local_psnr_db REAL,
    mse REAL,
    max_abs_error REAL,
    peak REAL,
    float_min REAL,
    float_max REAL,
    exact INTEGER NOT NULL,
    is_drop INTEGER NOT NULL,
    drop_db REAL,
    PRIMARY KEY (run_id, layer_index)
);
CREATE INDEX IF NOT EXISTS layers_name ON layers (name);
CREATE TABLE IF NOT EXISTS outputs (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT,
    psnr_db REAL,
    sqnr_db REAL,
    mse REAL,
    max_abs_error REAL,
    exact INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""

#: what brings a database of schema version N up to N + 1 (one up to SCHEMA_VERSION is made by _SCHEMA)
_MIGRATIONS = {
    1: "ALTER TABLE runs ADD COLUMN target TEXT; CREATE INDEX IF NOT EXISTS runs_target ON runs (target)",
}


@dataclass(frozen=True)
class RunRow:
    """One line of `qbench history`: the queried columns of a stored run."""

    id: int
    created: str
    status: str
    qbench_version: Optional[str]
    model_name: Optional[str]
    float_sha256: Optional[str]
    int8_sha256: Optional[str]
    device_name: Optional[str]
    target: Optional[str]  # device:runner, as compare labels a target (None in runs recorded before it was)
    device_arch: Optional[str]
    runtime: Optional[str]
    runtime_version: Optional[str]
    providers: Optional[str]
    emulated: Optional[int]
    output_psnr_db: Optional[float]
    speedup: Optional[float]
    memory_ratio: Optional[float]
    float_median_ms: Optional[float]
    int8_median_ms: Optional[float]
    float_peak_mb: Optional[float]
    int8_peak_mb: Optional[float]
    n_layers: int
    n_drops: int
    n_unmatched: int
    report_path: Optional[str]

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready data."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_ROW_COLUMNS = ", ".join(f.name for f in fields(RunRow))


def default_db_path() -> Path:
    """Where runs are recorded without ``--db``: ``$QBENCH_DB``, else the user data dir."""
    override = os.environ.get(DB_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_data_dir("qbench")) / "results.sqlite"


class ResultsStore:
    """Runs recorded in one SQLite file; safe to share between processes.

    Each call opens its own short-lived connection, so a store object can be
    created once and used from anywhere in one process; other processes use
    their own store objects on the same path.

    Args:
        path: The database file; created, with its directory, on first use.
            Defaults to :func:`default_db_path`.
    """

    def __init__(self, path: Union[str, os.PathLike, None] = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self._ready = False

    def record(self, report: Mapping[str, Any], report_path: Union[str, os.PathLike, None] = None,
               report_json: Optional[str] = None) -> int:
        """Store one finished run, all or nothing.

        Args:
            report: A ``qbench.report/1`` dict.
            report_path: Where its report.json was written, shown by history.
            report_json: ``json.dumps(report)``, when the caller has it already (report.json_text.encode).

        Returns:
            The new run id.

        Raises:
            UserError: The report is not a qbench report, or the database is unusable.
        """
        schema = str(report.get("schema", ""))
        if not schema.startswith(REPORT_SCHEMA_PREFIX):
            raise UserError(f"not a qbench report (schema {schema!r}); expected {REPORT_SCHEMA_PREFIX}")
        settings = report.get("settings")
        if isinstance(settings, Mapping) and redact_settings(settings) != settings:  # a report qbench did not build
            report, report_json = {**report, "settings": redact_settings(settings)}, None
        run = _run_columns(report, report_path, report_json)
        columns = ", ".join(run)
        marks = ", ".join("?" for _ in run)
        with self._transaction() as conn:
            run_id = conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", list(run.values())).lastrowid
            conn.executemany("INSERT INTO layers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _layer_rows(run_id, report))
            conn.executemany("INSERT INTO outputs VALUES (?,?,?,?,?,?,?,?)", _output_rows(run_id, report))
        return int(run_id)

    def history(self, model: Optional[str] = None, device: Optional[str] = None,
                limit: Optional[int] = None) -> list[RunRow]:
        """Stored runs, newest first.

        Args:
            model: Keep runs whose model file name or path (as given, or the
                float/int8 files run) equals this, or whose float/int8 sha256
                starts with it.
            device: Keep runs whose device name, target label (``device:runner``) or architecture equals this.
            limit: At most this many rows.

        Returns:
            The matching runs.
        """
        where, params = [], []
        if model:
            where.append("(model_name = ? OR source_path = ? OR float_path = ? OR int8_path = ?"
                         " OR float_sha256 LIKE ? OR int8_sha256 LIKE ?)")
            params += [model, model, model, model, f"{model.lower()}%", f"{model.lower()}%"]
        if device:
            where.append("(device_name = ? OR target = ? OR device_arch = ?)")
            params += [device, device, device]
        sql = f"SELECT {_ROW_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            return [RunRow(*row) for row in conn.execute(sql, params)]

    def get(self, run_id: int) -> dict[str, Any]:
        """The report of one stored run, as it was recorded.

        Raises:
            UserError: No run has this id.
        """
        with self._read() as conn:
            row = conn.execute("SELECT report_json FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise UserError(f"no run {run_id} in {self.path}")
        return json.loads(row[0])

    def row(self, run_id: int) -> RunRow:
        """The history row of one stored run.

        Raises:
            UserError: No run has this id.
        """
        with self._read() as conn:
            row = conn.execute(f"SELECT {_ROW_COLUMNS} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise UserError(f"no run {run_id} in {self.path}")
        return RunRow(*row)

    def layers(self, run_id: int) -> list[dict[str, Any]]:
        """The per-layer figures of one run, in topological order."""
        with self._read() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM layers WHERE run_id = ? ORDER BY layer_index", (int(run_id),))
            return [dict(row) for row in rows]

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the lock is taken up front so writers queue, not deadlock."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open results database {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if not self._ready:
                self._initialize(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(f"cannot use results database {self.path}: {exc}") from exc
        return conn

    def _initialize(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise UserError(f"results database {self.path} was written by a newer qbench "
                            f"(schema {version}, this one knows {SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # read again under the lock: another process may have upgraded it meanwhile
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                # a new database gets today's schema; an older one its missing steps
                script = ";".join(_MIGRATIONS[v] for v in range(version, SCHEMA_VERSION)) if version else _SCHEMA
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._ready = True


def _run_columns(report: Mapping[str, Any], report_path: Union[str, os.PathLike, None],
                 report_json: Optional[str] = None) -> dict[str, Any]:
    device = report.get("device") or {}
    models = report.get("models") or {}
    float_model, int8_model = models.get("float") or {}, models.get("int8") or {}
    latency, memory = report.get("latency") or {}, report.get("memory") or {}
    summary = report.get("summary") or {}
    layers = report.get("layers") or []
    # The model the user gave names the run: settings.user_model when settings.model is qbench's
    # prepared copy of it (calibrate, fix and compare run that copy), else settings.model.
    settings = report.get("settings") or {}
    source = settings.get("user_model") or settings.get("model") or float_model.get("path")
    return {
        "created": report.get("created") or _now(),
        "recorded": _now(),
        "status": str(report.get("status") or "ok"),
        "qbench_version": report.get("qbench_version"),
        "model_name": Path(source).name if source else None,
        "source_path": str(source) if source else None,
        "float_path": float_model.get("path"),
        "float_sha256": float_model.get("sha256"),
        "float_size_bytes": float_model.get("size_bytes"),
        "int8_path": int8_model.get("path"),
        "int8_sha256": int8_model.get("sha256"),
        "int8_size_bytes": int8_model.get("size_bytes"),
        "device_name": device.get("name"),
        "target": device.get("target") or device.get("name"),
        "device_arch": device.get("arch"),
        "device_system": device.get("system"),
        "runtime": device.get("runtime"),
        "runtime_version": device.get("runtime_version"),
        "providers": ",".join(device.get("providers") or []),
        "emulated": _flag(device.get("emulated")) if "emulated" in device else None,
        "output_psnr_db": summary.get("output_psnr_db"),
        "speedup": latency.get("speedup", summary.get("speedup")),
        "memory_ratio": memory.get("ratio", summary.get("memory_ratio")),
        "float_median_ms": (latency.get("float") or {}).get("median_ms"),
        "int8_median_ms": (latency.get("int8") or {}).get("median_ms"),
        "float_peak_mb": (memory.get("float") or {}).get("peak_mb"),
        "int8_peak_mb": (memory.get("int8") or {}).get("peak_mb"),
        "n_layers": len(layers),
        "n_drops": sum(1 for layer in layers if layer.get("drop")),
        "n_unmatched": len(report.get("unmatched") or []),
        "report_path": str(Path(report_path).resolve()) if report_path else None,
        "device_json": json.dumps(device, sort_keys=True),
        "settings_json": json.dumps(report.get("settings") or {}, sort_keys=True),
        "summary_json": json.dumps(summary, sort_keys=True),
        "report_json": json.dumps(report) if report_json is None else report_json,
    }


def _layer_rows(run_id: int, report: Mapping[str, Any]) -> Iterator[tuple]:
    # A generator, consumed inside the transaction: a bad layer aborts the whole run.
    for position, layer in enumerate(report.get("layers") or []):
        yield (
            run_id, int(layer.get("index", position)), str(layer["name"]), layer.get("op_type"),
            _real(layer.get("psnr_db")), _real(layer.get("sqnr_db")), _real(layer.get("local_psnr_db")),
            _real(layer.get("mse")), _real(layer.get("max_abs_error")), _real(layer.get("peak")),
            _real(layer.get("float_min")), _real(layer.get("float_max")),
            _flag(layer.get("exact")), _flag(layer.get("drop")), _real(layer.get("drop_db")),
        )


def _output_rows(run_id: int, report: Mapping[str, Any]) -> Iterator[tuple]:
    for output in report.get("outputs") or []:
        yield (
            run_id, str(output["name"]), output.get("kind"), _real(output.get("psnr_db")),
            _real(output.get("sqnr_db")), _real(output.get("mse")), _real(output.get("max_abs_error")),
            _flag(output.get("exact")),
        )


def _real(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _flag(value: Any) -> int:
    return 1 if value else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
