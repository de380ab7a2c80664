"""The agent bundle: deterministic, agent + protocols only, and it runs as the agent."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

from qbench.host.transport.base import READY_PREFIX
from qbench.host.transport.bundle import build_bundle


def test_same_sources_give_the_same_bytes_and_name():
    first, second = build_bundle(), build_bundle()
    assert first.data == second.data
    assert first.name == f"qbench-agent-{first.sha256[:16]}.pyz"


def test_bundle_holds_agent_and_protocols_only():
    names = zipfile.ZipFile(io.BytesIO(build_bundle().data)).namelist()
    assert names == sorted(names)
    assert {"__main__.py", "qbench/__init__.py", "qbench/agent/__main__.py", "qbench/protocols/codec.py"} <= set(names)
    assert not [n for n in names if n.startswith("qbench/host") or "__pycache__" in n or n.endswith(".pyc")]


def test_bundle_runs_the_agent_until_stdin_closes(tmp_path):
    bundle = build_bundle()
    path = tmp_path / bundle.name
    path.write_bytes(bundle.data)
    cmd = [sys.executable, str(path), "--bind", "tcp://127.0.0.1:0", "--cache-dir", str(tmp_path / "cache"),
           "--exit-on-stdin-eof", "--no-auth"]
    # Closing stdin right away: the agent still binds and reports ready, then exits on the EOF.
    done = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(READY_PREFIX + "tcp://127.0.0.1:")
