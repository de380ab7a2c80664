"""Boards shared through a real labgrid coordinator and exporter, measured by real qbench processes.

Boards: the session's OpenSSH sshd (place ``b1``, and ``b3``, ``t1``, ``r1`` and ``r2`` through
resources of their own), a dropbear without SFTP (``b2``), an sshd that is stopped (``dead``) and
an sshd that takes only a password, which its NetworkService carries (``pw``). Every qbench run here is the real CLI
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
import psutil
import pytest
import yaml

from cli import QBENCH
from conftest import running_dropbear, running_password_sshd, running_sshd
from lab_helpers import running_lab
from models import build_convnet, write_convnet_samples
from qbench.host.lab.coordinator import connect
from qbench.host.lab.lease import HEALTH_TAG, LEASE_TAG
from qbench.host.quantize.onnx import quantize_onnx
from ssh_helpers import agent_pids, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = ["--runs", "3", "--warmup", "1", "--profile-runs", "0", "--histogram-bins", "0", "--quiet"]
LOCKED = re.compile(r"labgrid place (\S+), locked (\S+) after ([\d.]+) s")
PASSWORD = "lab-pw-4f9c1e"  # the password board's, in its NetworkService only


@pytest.fixture(scope="module")
def lab(sshd, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    with running_dropbear(root / "dropbear") as nosftp, running_sshd(root / "dead", netns=False) as dead, \
            running_password_sshd(root / "pwsshd", PASSWORD) as pwboard:
        dead.stop()  # a board whose sshd died
        # One key for every board, as a lab's controllers have: the session sshd's.
        (nosftp.root / ".ssh" / "authorized_keys").write_text(Path(f"{sshd.user_key}.pub").read_text())
        boards = {name: {"address": address, "username": "root", "port": port} for name, address, port in (
            ("board1", sshd.address, sshd.port), ("board3", sshd.address, sshd.port),
            ("board2", nosftp.address, nosftp.port), ("deadboard", dead.address, dead.port),
            *((name, sshd.address, sshd.port) for name in ("tboard", "rboard1", "rboard2")))}
        boards["pwboard"] = {"address": pwboard.address, "username": "root", "port": pwboard.port, "password": PASSWORD}
        with running_lab(root, boards) as running:
            running.add_places({"b1": ("board1", {"pool": "shared", "arch": "x86_64"}),
                                "b2": ("board2", {"pool": "nosftp"}), "b3": ("board3", {"pool": "flaky"}),
                                "dead": ("deadboard", {"pool": "flaky"}), "pw": ("pwboard", {"pool": "pw"}),
                                # settings from tags; a key path from a tag would be a credential: not read
                                "t1": ("tboard", {"pool": "tagged", "qbench-workdir": str(root / "tagged-workdir"),
                                                  "qbench-connect-timeout": "7", "qbench-key": "/nonexistent"}),
                                **{f"r{n}": (f"rboard{n}", {"pool": "retry", "qbench-workdir": str(root / f"wr{n}")})
                                   for n in (1, 2)}})
            work = root / "work"
            work.mkdir()
            build_convnet(work / "convnet.onnx")
            write_convnet_samples(work, 3)
            # Quantized once here: every run then measures the given pair (nothing to quantize per run).
            quantize_onnx(work / "convnet.onnx", work / "convnet.int8.onnx", dict(np.load(work / "calib.npz")))
            home = root / "home"
            (home / ".ssh").mkdir(parents=True)
            (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line + nosftp.known_hosts_line
                                                      + pwboard.known_hosts_line)
            (work / "devices.yaml").write_text(yaml.safe_dump({
                "labgrid": {"coordinator": running.address,
                            "defaults": {"key": str(sshd.user_key), "python": sys.executable,
                                         "workdir": str(root / "device-workdir"), "connect_timeout": 5}},
                "devices": {"one": {"place": "b1"}, "nosftp": {"place": "b2"}, "deaddev": {"place": "dead"},
                            "three": {"place": "b3"}, "pwdev": {"place": "pw", "key": None},
                            "tagged": {"place": "t1"},
                            "tagged-own": {"place": "t1", "workdir": str(root / "own-workdir")}},
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


def _locked_by(lab, name: str, pid: int) -> bool:
    """Whether place ``name`` is locked under the lease of qbench process ``pid`` (the tag comes first)."""
    place = _place(lab, name)
    return bool(place.acquired) and place.tags.get(LEASE_TAG, "").startswith(f"{pid}-")


def _free(lab, name: str) -> bool:
    """Neither locked nor reserved (a released lease leaves its tag, naming a reservation that is gone)."""
    place = _place(lab, name)
    return not place.acquired and not place.reservation


def test_two_controllers_share_one_board_one_after_the_other(lab):
    first = _start(lab, "one", "first", "--min-seconds", "2")
    assert wait_until(lambda: _locked_by(lab, "b1", first.pid), 60.0), "the first run never locked b1"
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
    assert _free(lab, "b1")


def test_a_sigkilled_controllers_lock_is_taken_over(lab):
    victim = _start(lab, "one", "victim", "--min-seconds", "30")
    assert wait_until(lambda: _locked_by(lab, "b1", victim.pid), 60.0)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    stale = _place(lab, "b1")
    assert stale.acquired and stale.tags[LEASE_TAG].startswith(f"{victim.pid}-")  # labgrid locks never time out
    status = _qbench(lab, "lab", "status")
    assert status.returncode == 0 and f"qbench pid {victim.pid}, gone: stale" in status.stdout
    after = _run(lab, "one", "after", "--min-seconds", "0", "--wait-timeout", "30")
    assert after.returncode == 0, after.stderr
    assert f"took over the stale lock of qbench pid {victim.pid}" in after.stderr
    assert _free(lab, "b1")


def test_ctrl_c_releases_the_board(lab):
    run = _start(lab, "one", "interrupted", "--min-seconds", "30")
    assert wait_until(lambda: _locked_by(lab, "b1", run.pid), 60.0)
    time.sleep(1.0)  # into the timing
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert _free(lab, "b1"), err


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
    assert _free(lab, "dead")  # a place that failed its check is never left locked
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
    assert _free(lab, "dead")
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
    assert _free(lab, "b3")


# A controller's first steps of a lease, then SIGKILL: "lock" dies right after locking, "tag" before it.
KILLED_IN_LEASE = """
import os, signal, sys, time
from qbench.host.lab import lease
from qbench.host.lab.coordinator import connect
coordinator, place, step = connect(sys.argv[1]), sys.argv[2], sys.argv[3]
reservation = coordinator.reserve({"name": place}, 0).token
while coordinator.poll(reservation).state != "allocated":
    time.sleep(0.1)
if step == "lock":
    lease._claim(coordinator, place, lease.own_token(), reservation)
else:
    coordinator.set_tags(place, {lease.LEASE_TAG: f"{lease.own_token()}-{reservation}"})
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_in_lease(lab, place: str, step: str) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_IN_LEASE, lab.address, place, step], env=_env(lab),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize("step", ["lock", "tag"])
def test_a_controller_killed_around_its_lock_leaves_a_lease_the_next_one_takes_over(lab, step):
    _killed_in_lease(lab, "b3", step)
    left = _place(lab, "b3")
    assert left.reservation and bool(left.acquired) == (step == "lock")  # locked, or allocated for 60 s
    after = _run(lab, "three", f"killed-{step}", "--min-seconds", "0", "--wait-timeout", "30")
    assert after.returncode == 0, after.stderr
    assert "took over the stale lock of qbench pid" in after.stderr
    assert _lock(_report(lab, f"killed-{step}"))[0] == "b3"
    assert _free(lab, "b3")


def test_a_lock_taken_by_hand_is_never_mistaken_for_a_stale_one(lab):
    # A qbench killed before it locked left its tag; its reservation is gone (expired), and a person
    # of this very host and user locks the place with labgrid-client: not qbench's to take.
    _killed_in_lease(lab, "b3", "tag")
    connect(lab.address).cancel(_place(lab, "b3").reservation)
    lab.client("-p", "b3", "acquire")
    try:
        waited = _run(lab, "three", "by-hand", "--min-seconds", "0", "--wait-timeout", "2")
        assert waited.returncode == 1 and "is still locked by" in waited.stderr, waited.stderr
        assert "took over" not in waited.stderr and _place(lab, "b3").acquired
        assert "stale" not in _qbench(lab, "lab", "status").stdout
    finally:
        lab.client("-p", "b3", "release")


def test_a_places_tags_give_settings_below_the_devices_own(lab):
    tagged, own = lab.root / "tagged-workdir", lab.root / "own-workdir"
    # labgrid.defaults' workdir gives way to the tag's; the tag qbench-key is not a setting (or this fails)
    deployed = _qbench(lab, "deploy", "tagged")
    assert deployed.returncode == 0, deployed.stderr
    assert list(tagged.glob("qbench-agent*"))
    mine = _qbench(lab, "deploy", "tagged-own")  # the device's own workdir wins over the tag
    assert mine.returncode == 0, mine.stderr
    assert list(own.glob("qbench-agent*"))
    run = _run(lab, "tag:pool=tagged", "tagged", "--min-seconds", "0")  # a tag: job has only the defaults
    assert run.returncode == 0, run.stderr
    assert _lock(_report(lab, "tagged"))[0] == "t1" and list((tagged / "cache").rglob("*.onnx"))
    lab.client("-p", "t1", "set-tags", "qbench-connect-timeout=soon")
    try:
        bad = _qbench(lab, "deploy", "tagged")
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert "labgrid place t1: tag qbench-connect-timeout=soon:" in bad.stderr
    finally:
        lab.client("-p", "t1", "set-tags", "qbench-connect-timeout=7")


def test_a_networkservice_password_logs_in_and_is_written_nowhere(lab):
    done = _run(lab, "pwdev", "pw", "--min-seconds", "0")  # the device has no key: the place's password
    assert done.returncode == 0, done.stderr
    assert _lock(_report(lab, "pw"))[0] == "pw"
    status = _qbench(lab, "lab", "status")
    written = [done.stdout, done.stderr, status.stdout, status.stderr]
    written += [path.read_bytes().decode(errors="replace") for path in (lab.work / "pw").rglob("*") if path.is_file()]
    written.append((lab.work / "results.db").read_bytes().decode(errors="replace"))
    assert not any(PASSWORD in text for text in written)


def _leased(lab, pid: int) -> str | None:
    """The place of pool=retry locked under the lease of process ``pid``."""
    return next((name for name in ("r1", "r2") if _locked_by(lab, name, pid)), None)


def test_a_tag_job_whose_agent_dies_is_retried_once_on_another_board(lab):
    job = _start(lab, "tag:pool=retry", "retry", "--min-seconds", "3", "--timeout", "10")
    assert wait_until(lambda: _leased(lab, job.pid), 60.0), "the job never locked a place"
    first = _leased(lab, job.pid)
    workdir = lab.root / f"w{first}"
    assert wait_until(lambda: agent_pids(workdir), 60.0), "the agent never started"
    agent = psutil.Process(agent_pids(workdir)[0])
    assert wait_until(lambda: agent.children(recursive=True), 60.0), "the agent never started a worker"
    agent.kill()  # the board's agent dies under the job, while it measures
    _, err = job.communicate(timeout=240)
    assert job.returncode == 0, err
    other = {"r1": "r2", "r2": "r1"}[first]
    assert f"failed on labgrid place {first}" in err and "retrying once on another place with pool=retry" in err
    report = _report(lab, "retry")
    assert report["status"] == "ok" and _lock(report)[0] == other
    assert f"retried after an infrastructure failure on {first})" in report["device"]["transport"]
    assert any(f"labgrid place {other}" in n and n.startswith("retried once on") and "after an infrastructure failure" in n
               for n in report["notes"])
    assert _free(lab, "r1") and _free(lab, "r2")


def test_a_model_failure_is_not_retried(lab):
    failed = _run(lab, "tag:pool=retry", "model-fails", "--min-seconds", "0", "--provider", "NoSuchExecutionProvider")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "retrying" not in failed.stderr and "retried" not in json.dumps(_report(lab, "model-fails")["notes"])


def test_a_coordinator_restart_mid_run_keeps_the_measurements(lab):
    # Last in this module: the restart drops every lock and the exporter (it exits with its coordinator).
    run = _start(lab, "one", "restart", "--min-seconds", "3")
    assert wait_until(lambda: _locked_by(lab, "b1", run.pid), 60.0)
    assert wait_until(lambda: agent_pids(lab.root / "device-workdir"), 60.0), "the agent never started"
    lab.stop_coordinator()
    lab.start_coordinator()
    _, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    assert "could not release labgrid place b1 (did the coordinator restart?" in err
    report = _report(lab, "restart")
    assert report["status"] == "ok" and report["latency"]["int8"]["runs"] >= 3 and report["layers"]
