"""Boards without SFTP: a real dropbear and an OpenSSH sshd with no ``Subsystem sftp`` line.

The agent bundle reaches them over an exec channel (``cat > file.part``, SHA-256 checked on the
board, renamed into place); then the agent starts and measures as on any board.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import running_dropbear, running_sshd
from qbench.host.inventory import Device
from qbench.host.transport.bundle import current_bundle
from qbench.host.transport.exec_copy import ExecCopyError, copy_command, exec_copy
from qbench.host.transport.client import AgentClient
from qbench.host.transport.ssh import SSHTransport
from qbench.protocols.messages import BenchmarkRequest, TimingConfig
from test_ssh_run import _inputs, _tiny_model

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module", params=["dropbear", "openssh-no-sftp"])
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    servers = {"dropbear": lambda: running_dropbear(root), "openssh-no-sftp": lambda: running_sshd(root, sftp=False)}
    with servers[request.param]() as running:
        yield running


@pytest.fixture
def device(server, tmp_path, monkeypatch) -> Device:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(server.known_hosts_line)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return Device(name="nosftp", host=server.address, port=server.port, user="root", key=str(server.user_key),
                  python=sys.executable, workdir=str(tmp_path / "device-workdir"), connect_timeout=5.0)


def test_deploy_goes_over_exec_once_then_nothing(device):
    bundle = current_bundle()
    transport = SSHTransport(device)
    try:
        assert transport.copy_method() == "exec"
        first = transport.deploy()
    finally:
        transport.stop()
    remote = Path(first.path)
    assert first.uploaded and remote.read_bytes() == bundle.data
    assert sorted(p.name for p in remote.parent.iterdir()) == [bundle.name]  # no .part left
    transport = SSHTransport(device)
    try:
        assert not transport.deploy().uploaded
    finally:
        transport.stop()


def test_agent_runs_a_benchmark_after_an_exec_deploy(device, tmp_path):
    transport = SSHTransport(device)
    try:
        endpoint = transport.start()
        client = AgentClient(endpoint, timeout_s=30)
        try:
            assert "onnxruntime" in client.hello().runtimes
            ref = client.ensure_model(_tiny_model(tmp_path / "tiny.onnx"), "onnx")
            reply = client.benchmark(BenchmarkRequest(model=ref, timing=TimingConfig(warmup=1, runs=3, min_seconds=0.0)),
                                     _inputs())
            assert reply.latency.runs >= 3 and reply.latency.median_ms > 0
        finally:
            client.close()
    finally:
        transport.stop()


def test_a_copy_whose_hash_differs_is_removed_and_refused(device, tmp_path):
    workdir = tmp_path / "device-workdir"
    transport = SSHTransport(device)
    try:
        wrong = "0" * 64
        rc, _, err = transport.run_command(copy_command(device.remote_python(), str(workdir), str(workdir / "f"), wrong),
                                           stdin=b"payload")
        assert rc == 3 and "sha256 " in err
        assert list(workdir.iterdir()) == []  # neither the file nor its .part
        exec_copy(transport.run_command, device.remote_python(), b"payload", str(workdir), str(workdir / "f"))
        assert (workdir / "f").read_bytes() == b"payload"
        with pytest.raises(ExecCopyError, match="cannot create directory.*File exists"):
            exec_copy(transport.run_command, device.remote_python(), b"x", str(workdir / "f"), str(workdir / "f" / "g"))
    finally:
        transport.stop()


def test_devices_check_names_the_copy_method(device, tmp_path):
    inventory = tmp_path / "devices.yaml"
    settings = device.model_dump(mode="json", exclude={"name"}, exclude_unset=True)
    inventory.write_text(yaml.safe_dump({"devices": {device.name: settings}}))
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", "from qbench.host.cli.main import main; main()", "devices", "check", "--devices", str(inventory)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "file copy" in done.stdout and "exec (no SFTP subsystem" in done.stdout
