"""Deploying the agent bundle and checking devices against a real sshd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qbench.host.errors import UserError
from qbench.host.transport.bundle import current_bundle
from qbench.host.transport.ssh import SSHTransport

pytestmark = pytest.mark.ssh

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _deploy(device):
    transport = SSHTransport(device)
    try:
        return transport.deploy()
    finally:
        transport.stop()


def test_deploy_uploads_once_then_nothing(ssh_home, make_device, tmp_path):
    device = make_device()
    bundle = current_bundle()
    first = _deploy(device)
    assert first.uploaded
    remote = Path(first.path)
    assert remote.name == bundle.name and remote.parent == tmp_path / "device-workdir"
    assert remote.read_bytes() == bundle.data
    mtime = remote.stat().st_mtime_ns
    second = _deploy(device)
    assert not second.uploaded and second.path == first.path
    assert remote.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in remote.parent.iterdir()) == [bundle.name]  # no partial upload left


def test_stale_copy_is_replaced(ssh_home, make_device, tmp_path):
    workdir = tmp_path / "device-workdir"
    workdir.mkdir()
    (workdir / current_bundle().name).write_bytes(b"truncated")
    result = _deploy(make_device())
    assert result.uploaded
    assert Path(result.path).read_bytes() == current_bundle().data


def test_missing_packages_are_reported_with_the_pip_command(ssh_home, make_device):
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs a Python without numpy at /usr/bin/python3")
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import numpy, zmq"], capture_output=True, timeout=60)
    if probe.returncode == 0:
        pytest.skip("/usr/bin/python3 has numpy and pyzmq: no package is missing there")
    with pytest.raises(UserError, match=r"missing on the device; install with: /usr/bin/python3 -m pip install --user "
                                        r"(numpy )?(pyzmq )?onnxruntime$"):
        _deploy(make_device(python=str(SYSTEM_PYTHON)))


def test_no_python_on_the_device(ssh_home, make_device):
    with pytest.raises(UserError, match=r"no Python at '/nonexistent/python3' on the device"):
        _deploy(make_device(python="/nonexistent/python3"))


def test_too_old_python_is_refused(ssh_home, make_device, tmp_path):
    # A device whose `python` is a Python 2 (stood in for by a script printing its version).
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\necho 2.7.18\n")
    old.chmod(0o755)
    with pytest.raises(UserError, match=r"Python 2\.7\.18 .* too old; the agent needs Python >= 3\.10"):
        _deploy(make_device(python=str(old)))


def test_full_disk_in_workdir(ssh_home, make_device, tmp_path):
    workdir = tmp_path / "tiny"
    workdir.mkdir()
    device = make_device(workdir=str(workdir))
    # Mounted from the device's side: its sshd may live in another mount namespace than the tests.
    transport = SSHTransport(device)
    try:
        rc, _, err = transport.run_command(f"mount -t tmpfs -o size=16k tmpfs {workdir}")
        if rc != 0:
            pytest.skip(f"cannot mount a small tmpfs on the device: {err.strip()}")
        try:
            with pytest.raises(UserError, match=r"disk full in .*tiny: \d+ KiB free, the agent needs \d+ KiB"):
                transport.deploy()
        finally:
            transport.run_command(f"umount {workdir}")
    finally:
        transport.stop()


def _cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home), "COLUMNS": "200"}
    env.pop("SSH_AUTH_SOCK", None)
    env.pop("QBENCH_DEVICES", None)
    return subprocess.run(
        [sys.executable, "-c", "from qbench.host.cli.main import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )


def _write_inventory(path: Path, device, **extra) -> None:
    settings = device.model_dump(mode="json", exclude={"name"}, exclude_unset=True)
    path.write_text(yaml.safe_dump({"devices": {device.name: {**settings, **extra}}}))


def test_cli_deploy_then_check_reports_the_device(ssh_home, make_device, tmp_path):
    device = make_device()
    _write_inventory(tmp_path / "devices.yaml", device)
    deployed = _cli("deploy", "testbox", home=ssh_home, cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr
    assert "uploaded" in deployed.stdout
    again = _cli("deploy", "testbox", home=ssh_home, cwd=tmp_path)
    assert "nothing uploaded" in again.stdout
    checked = _cli("devices", "check", "testbox", home=ssh_home, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for expected in ("reachable, auth", "root@", "x86_64", "numpy", "onnxruntime", "CPUExecutionProvider",
                     f"current ({current_bundle().name})", "memory available"):
        assert expected in checked.stdout


def test_cli_check_fails_for_a_device_with_a_bad_key(ssh_home, make_device, tmp_path, sshd):
    good = make_device()
    bad = make_device(name="badkey", key=str(sshd.other_key))
    inventory = tmp_path / "lab.yaml"
    inventory.write_text(yaml.safe_dump({"devices": {
        d.name: d.model_dump(mode="json", exclude={"name"}, exclude_unset=True) for d in (good, bad)
    }}))
    checked = _cli("devices", "check", "--devices", str(inventory), home=ssh_home, cwd=tmp_path)
    assert checked.returncode == 1
    assert "authentication failed" in checked.stdout
    assert "failed: badkey" in checked.stdout
    listed = _cli("devices", "--devices", str(inventory), home=ssh_home, cwd=tmp_path)
    assert listed.returncode == 0
    assert all(name in listed.stdout for name in ("badkey", "testbox", "local"))


def test_cli_unknown_device_lists_the_known_ones(ssh_home, make_device, tmp_path):
    _write_inventory(tmp_path / "devices.yaml", make_device())
    result = _cli("deploy", "pi5", home=ssh_home, cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown device 'pi5'" in result.stderr and "known: local, testbox" in result.stderr
    assert "Traceback" not in result.stderr
