"""Ctrl-C during a `qbench run` on an SSH device: the partial report, exit 130, no agent left on the device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from cli import QBENCH
from models import build_convnet
from ssh_helpers import agent_pids, wait_until


def test_ctrl_c_while_timing_on_an_ssh_device(ssh_home, make_device, tmp_path):
    device = make_device()
    settings = device.model_dump(mode="json", exclude={"name"}, exclude_unset=True)
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": {device.name: settings}}))
    model = build_convnet(tmp_path / "net.onnx")
    out, workdir = tmp_path / "out", Path(device.workdir)
    env = {**os.environ, "HOME": str(ssh_home)}
    env.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.Popen(
        [*QBENCH, "run", str(model), "--device",
         device.name, "--devices", str(tmp_path / "devices.yaml"), "--out", str(out), "--db",
         str(tmp_path / "db.sqlite"), "--quiet", "--min-seconds", "600", "--runs", "100000000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,)

    def timing() -> bool:
        for job in (workdir / "cache" / "jobs").glob("*/job.json"):
            try:
                if json.loads(job.read_text())["kind"] == "benchmark":
                    return True
            except (OSError, ValueError):
                continue
        return proc.poll() is not None

    try:
        deadline = time.monotonic() + 240
        while not timing():
            assert time.monotonic() < deadline, "the run never reached its timing"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert f"qbench: interrupted during timing float (partial report in {out / 'report.json'})" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["device"]
    assert wait_until(lambda: not agent_pids(workdir), 30.0), agent_pids(workdir)
