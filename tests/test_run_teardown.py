"""A finished run stops its agent off the critical path (transport/stopping.py), yet no agent, zygote or zombie
outlives it: the next run and the process's exit both wait for that stop. Real runs, the process tree from /proc."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cli import qbench
from models import build_convnet
from qbench.host import session
from qbench.host.run_state import UI, RunSettings
from qbench.host.transport import stopping
from qbench.host.transport.local import LocalTransport

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:  # exited meanwhile
            continue
        if stat and int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _exists(pid: int) -> bool:
    """Running or a zombie: either way not yet reaped."""
    return Path(f"/proc/{pid}").exists()


class Watch(UI):
    """Notes whether ``earlier`` pids exist when the run starts, and the agent's process tree at the capture."""

    def __init__(self, transport: LocalTransport, earlier: list[int] = ()):
        self.transport, self.earlier = transport, list(earlier)
        self.left_at_start: list[int] | None = None
        self.tree: list[int] = []

    def stage(self, name: str) -> None:
        if self.left_at_start is None:
            self.left_at_start = [pid for pid in self.earlier if _exists(pid)]
        if name == "capture":  # the agent and its runtime's zygote are up
            agent = self.transport._proc.pid
            self.tree = [agent, *_children(agent)]


def _run(model: Path, out: Path, cache: Path, earlier: list[int] = ()) -> Watch:
    transport = LocalTransport(cache_dir=str(cache))
    watch = Watch(transport, earlier)
    state = session.run(RunSettings(model=model, out_dir=out, samples=2, accuracy_only=True), transport, watch)
    assert state.error is None and state.capture is not None
    assert len(watch.tree) >= 2, watch.tree  # the agent and at least one zygote
    return watch


def test_the_next_run_and_wait_stopped_find_the_agent_gone(tmp_path, agent_cache):
    model = build_convnet(tmp_path / "convnet.onnx")
    cache = agent_cache / ".qbench" / "cache"
    first = _run(model, tmp_path / "first", cache)
    second = _run(model, tmp_path / "second", cache, earlier=first.tree)
    assert second.left_at_start == []
    stopping.wait_stopped()
    assert [pid for pid in second.tree if _exists(pid)] == []


def test_a_process_exits_only_once_the_agent_it_stops_in_the_background_is_gone(agent_cache):
    script = textwrap.dedent(f"""
        from qbench.host.transport import stopping
        from qbench.host.transport.client import AgentClient
        from qbench.host.transport.local import LocalTransport
        transport = LocalTransport(cache_dir={str(agent_cache / ".qbench" / "cache")!r})
        client = AgentClient(transport.start(), timeout_s=60)
        client.hello()
        client.close()
        print(transport._proc.pid, flush=True)
        stopping.stop_in_background(transport)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not _exists(int(proc.stdout))


def test_nothing_of_the_agent_outlives_qbench_run(tmp_path):
    model = build_convnet(tmp_path / "convnet.onnx")
    home = tmp_path / "home"  # the agent and its zygotes inherit HOME: it tells them from any other process
    proc = qbench("run", "--device", "local", str(model), "--samples", "2", "--accuracy-only", "--out", "out",
                  "--db", "runs.sqlite", "--json", "--quiet", cwd=tmp_path, cache=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "ok"
    marker = f"HOME={home}".encode() + b"\0"
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                left.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    assert left == []
