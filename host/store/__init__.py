"""Results store: every run recorded in SQLite, for history, diff and regressions."""

from qbench.host.store.db import ResultsStore, RunRow, default_db_path
from qbench.host.store.diff import RunDiff, diff_reports

__all__ = ["ResultsStore", "RunRow", "RunDiff", "default_db_path", "diff_reports"]
