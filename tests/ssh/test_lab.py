"""Boards shared through a real labgrid coordinator and exporter, measured by real qbench processes.

Boards: the session's OpenSSH sshd (place ``b1``, and ``b3`` through a second resource), a dropbear
without SFTP (``b2``) and an sshd that is stopped (``dead``). Every qbench run here is the real CLI
in a subprocess; the lab state is read back from the coordinator with labgrid's own client API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli import QBENCH
from conftest import running_dropbear, running_sshd
from lab_helpers import running_lab
from models import build_convnet, write_convnet_samples
from qbench.host.lab.coordinator import connect
from qbench.host.lab.lease import HEALTH_TAG, LEASE_TAG
from qbench.host.quantize.onnx import quantize_onnx
from ssh_helpers import agent_pids, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = ["--runs", "3", "--warmup", "1", "--profile-runs", "0", "--histogram-bins", "0", "--quiet"]
LOCKED = re.compile(r"labgrid place (\S+), locked (\S+) after ([\d.]+) s")


@pytest.fixture(scope="module")
def lab(sshd, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    with running_dropbear(root / "dropbear") as nosftp, running_sshd(root / "dead", netns=False) as dead:
        dead.stop()  # a board whose sshd died
        # One key for every board, as a lab's controllers have: the session sshd's.
        (nosftp.root / ".ssh" / "authorized_keys").write_text(Path(f"{sshd.user_key}.pub").read_text())
        boards = {name: {"address": address, "username": "root", "port": port} for name, address, port in (
            ("board1", sshd.address, sshd.port), ("board3", sshd.address, sshd.port),
            ("board2", nosftp.address, nosftp.port), ("deadboard", dead.address, dead.port))}
        with running_lab(root, boards) as running:
            running.add_places({"b1": ("board1", {"pool": "shared", "arch": "x86_64"}),
                                "b2": ("board2", {"pool": "nosftp"}), "b3": ("board3", {"pool": "flaky"}),
                                "dead": ("deadboard", {"pool": "flaky"})})
            work = root / "work"
            work.mkdir()
            build_convnet(work / "convnet.onnx")
            write_convnet_samples(work, 3)
            # Quantized once here: every run then measures the given pair (nothing to quantize per run).
            quantize_onnx(work / "convnet.onnx", work / "convnet.int8.onnx", dict(np.load(work / "calib.npz")))
            home = root / "home"
            (home / ".ssh").mkdir(parents=True)
            (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line + nosftp.known_hosts_line)
            (work / "devices.yaml").write_text(yaml.safe_dump({
                "labgrid": {"coordinator": running.address,
                            "defaults": {"key": str(sshd.user_key), "python": sys.executable,
                                         "workdir": str(root / "device-workdir"), "connect_timeout": 5}},
                "devices": {"one": {"place": "b1"}, "nosftp": {"place": "b2"}, "deaddev": {"place": "dead"}},
            }))
            running.work, running.home = work, home
            yield running


def _env(lab) -> dict:
    env = {**os.environ, "HOME": str(lab.home), "COLUMNS": "200"}
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("QBENCH_DEVICES", None)
    return env


def _start(lab, device: str, out: str, *extra: str) -> subprocess.Popen:
    args = ["run", "convnet.onnx", "--int8", "convnet.int8.onnx", "--device", device, "--data", "eval.npz",
            "--out", out, "--db", "results.db", *FAST, *extra]
    return subprocess.Popen([*QBENCH, *args], cwd=lab.work, env=_env(lab), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(lab, device: str, out: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = _start(lab, device, out, *extra)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _qbench(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*QBENCH, *args], cwd=lab.work, env=_env(lab), capture_output=True, text=True, timeout=120)


def _report(lab, out: str) -> dict:
    return json.loads((lab.work / out / "report.json").read_text())


def _lock(report: dict) -> tuple[str, float, float]:
    """(place, locked at (epoch s), waited s) from the report's transport label."""
    place, when, waited = LOCKED.search(report["device"]["transport"]).groups()
    return place, datetime.fromisoformat(when).timestamp(), float(waited)


def _place(lab, name: str):
    return connect(lab.address).place(name)


def test_two_controllers_share_one_board_one_after_the_other(lab):
    first = _start(lab, "one", "first", "--min-seconds", "2")
    assert wait_until(lambda: _place(lab, "b1").tags.get(LEASE_TAG), 60.0), "the first run never locked b1"
    second = _run(lab, "tag:pool=shared", "second", "--min-seconds", "0")
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert "waiting for a free place with pool=shared" in second.stderr
    a, b = _report(lab, "first"), _report(lab, "second")
    (place_a, locked_a, _), (place_b, locked_b, waited_b) = _lock(a), _lock(b)
    assert place_a == place_b == "b1" and waited_b > 0
    # The first run's timed runs alone took this long after it locked b1; the second locked b1 only after.
    measured_s = sum(sum(a["latency"][k]["samples_ms"]) for k in ("float", "int8")) / 1000
    assert measured_s > 0 and locked_b >= locked_a + measured_s  # no overlap of the measurement windows
    assert not _place(lab, "b1").acquired and not _place(lab, "b1").tags.get(LEASE_TAG)


def test_a_sigkilled_controllers_lock_is_taken_over(lab):
    victim = _start(lab, "one", "victim", "--min-seconds", "30")
    assert wait_until(lambda: _place(lab, "b1").tags.get(LEASE_TAG, "").startswith(f"{victim.pid}-"), 60.0)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    stale = _place(lab, "b1")
    assert stale.acquired and stale.tags[LEASE_TAG].startswith(f"{victim.pid}-")  # labgrid locks never time out
    status = _qbench(lab, "lab", "status")
    assert status.returncode == 0 and f"qbench pid {victim.pid}, gone: stale" in status.stdout
    after = _run(lab, "one", "after", "--min-seconds", "0", "--wait-timeout", "30")
    assert after.returncode == 0, after.stderr
    assert f"took over the stale lock of qbench pid {victim.pid}" in after.stderr
    assert not _place(lab, "b1").acquired


def test_ctrl_c_releases_the_board(lab):
    run = _start(lab, "one", "interrupted", "--min-seconds", "30")
    assert wait_until(lambda: _place(lab, "b1").tags.get(LEASE_TAG, "").startswith(f"{run.pid}-"), 60.0)
    time.sleep(1.0)  # into the timing
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert not _place(lab, "b1").acquired, err


def test_a_dead_board_is_quarantined_then_skipped(lab):
    # 1st failure: a tag: job given the dead board (b3 is locked by someone) moves on to b3 once it is free.
    lab.client("-p", "b3", "acquire")
    job = _start(lab, "tag:pool=flaky", "retried", "--min-seconds", "0")
    assert wait_until(lambda: _place(lab, "dead").tags.get("qbench-fails") == "1", 60.0)
    lab.client("-p", "b3", "release")
    _, err = job.communicate(timeout=180)
    assert job.returncode == 0, err
    assert "labgrid place dead failed its health check (1 of 3 before quarantine)" in err
    assert "connection refused" in err and "trying another place with the same tags" in err
    transport = _report(lab, "retried")["device"]["transport"]
    assert "labgrid place b3," in transport and "; dead failed its health check first)" in transport
    for attempt in (2, 3):
        failed = _qbench(lab, "lab", "check", "dead")
        assert failed.returncode == 1 and "failed its health check" in failed.stdout, failed.stdout + failed.stderr
        assert "connection refused" in failed.stdout
    place = _place(lab, "dead")
    assert place.tags[HEALTH_TAG] == "bad" and "after 3 failed health checks" in place.comment
    assert not place.acquired  # a place that failed its check is never left locked
    status = _qbench(lab, "lab", "status")
    assert "QUARANTINED" in status.stdout and "connection refused" in status.stdout
    refused = _qbench(lab, "lab", "check", "dead")
    assert refused.returncode == 1 and "is quarantined" in refused.stdout
    picked = _run(lab, "tag:pool=flaky", "flaky", "--min-seconds", "0")
    assert picked.returncode == 0, picked.stderr
    assert _lock(_report(lab, "flaky"))[0] == "b3"
    back = _qbench(lab, "lab", "unquarantine", "dead")
    assert back.returncode == 0 and "back in service" in back.stdout
    assert _place(lab, "dead").tags[HEALTH_TAG] == "ok" and not _place(lab, "dead").comment


def test_a_named_run_on_a_dead_board_fails_its_health_check_in_one_line(lab):
    failed = _run(lab, "deaddev", "deadrun", "--min-seconds", "0")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "labgrid place dead failed its health check" in failed.stderr and "connection refused" in failed.stderr
    assert not _place(lab, "dead").acquired
    _qbench(lab, "lab", "unquarantine", "dead")


def test_a_board_without_sftp_in_the_lab(lab):
    checked = _qbench(lab, "devices", "check", "nosftp")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "exec (no SFTP subsystem" in checked.stdout
    done = _run(lab, "tag:pool=nosftp", "nosftp", "--min-seconds", "0")
    assert done.returncode == 0, done.stderr
    assert _lock(_report(lab, "nosftp"))[0] == "b2"


def test_lab_release_breaks_a_foreign_lock(lab):
    lab.client("-p", "b3", "acquire")  # a person's lock, through labgrid-client
    waited = _run(lab, "tag:pool=flaky", "foreign", "--min-seconds", "0", "--wait-timeout", "2")
    assert waited.returncode == 1 and "became free within 2 s" in waited.stderr
    released = _qbench(lab, "lab", "release", "b3")
    assert released.returncode == 0 and "released" in released.stdout
    assert not _place(lab, "b3").acquired


def test_a_coordinator_restart_mid_run_keeps_the_measurements(lab):
    # Last in this module: the restart drops every lock and the exporter (it exits with its coordinator).
    run = _start(lab, "one", "restart", "--min-seconds", "3")
    assert wait_until(lambda: _place(lab, "b1").tags.get(LEASE_TAG, "").startswith(f"{run.pid}-"), 60.0)
    assert wait_until(lambda: agent_pids(lab.root / "device-workdir"), 60.0), "the agent never started"
    lab.stop_coordinator()
    lab.start_coordinator()
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert "could not release labgrid place b1 (did the coordinator restart?" in err
    report = _report(lab, "restart")
    assert report["status"] == "ok" and report["latency"]["int8"]["runs"] >= 3 and report["layers"]
