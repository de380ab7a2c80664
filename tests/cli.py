"""Run the real `qbench` CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive shell
# inherits SIGINT ignored, an ignored signal stays ignored across exec, and Python then installs no
# KeyboardInterrupt handler. Set in the child after exec, not in a preexec_fn: forking a test process
# whose gRPC threads (the lab tests' labgrid client) run and then calling Python in the child crashed it.
QBENCH = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from qbench.host.cli.main import main; main()"]


def qbench(*args: str, cwd: Path, cache: Path | None = None, timeout: float = 300,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; HOME is pointed at ``cache`` so agents share one model cache in the test session."""
    full_env = {**os.environ, **(env or {})}
    if cache is not None:
        full_env["HOME"] = str(cache)
    return subprocess.run([*QBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def load_report(out: Path) -> dict:
    return json.loads((Path(out) / "report.json").read_text())
