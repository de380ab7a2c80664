"""Shared fixtures: models built by the tests and a helper that runs the real `qbench` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

QBENCH = [sys.executable, "-c", "from qbench.host.cli.main import main; main()"]


@pytest.fixture(scope="session")
def agent_cache(tmp_path_factory) -> Path:
    """One model cache for the session's agents (content-addressed, so sharing is safe)."""
    return tmp_path_factory.mktemp("agent-cache")


def qbench(*args: str, cwd: Path, cache: Path | None = None, timeout: float = 300,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; HOME points the agent cache at ``cache``."""
    full_env = {**os.environ, **(env or {})}
    if cache is not None:
        full_env["HOME"] = str(cache)
    return subprocess.run([*QBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def load_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


def chromium() -> str | None:
    return shutil.which("chromium")
