"""A real OpenSSH server for the SSH tests, with generated keys, torn down afterwards.

sshd runs in its own network namespace (a veth pair with a private /30) when the machine
allows it, so the device's loopback, where the agent binds, is not the host's; otherwise
on 127.0.0.1 with a free port (``QBENCH_TEST_SSH_NETNS=0`` forces that). The test user is
root (we are root) with a key in a temporary authorized_keys file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil
import pytest

from qbench.host.inventory import Device

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0


@dataclasses.dataclass
class SshServer:
    address: str
    port: int
    root: Path
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    user_key: Path
    other_key: Path  # a valid key that is NOT authorized
    proc: subprocess.Popen
    netns: Optional[str]

    @property
    def known_hosts_line(self) -> str:
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.host_key_pub}\n"

    def session_processes(self) -> list[psutil.Process]:
        """The per-connection sshd processes (everything below the listener that is sshd)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [p for p in children if _name(p) == "sshd"]


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _keygen(path: Path) -> Path:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path


def _make_netns() -> Optional[tuple[str, str]]:
    """(namespace, sshd address) for a fresh namespace, or None where namespaces are not allowed."""
    if os.environ.get("QBENCH_TEST_SSH_NETNS", "1") == "0" or os.geteuid() != 0 or not shutil.which("ip"):
        return None
    pid = os.getpid()
    name, veth = f"qbssh{pid}", f"qbh{pid}"
    # Unique per test process, so that concurrent runs on one machine do not collide.
    third, fourth = (pid >> 6) & 255, (pid & 63) * 4
    host_ip, ns_ip = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "qbdev0", "netns", name],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", veth],
        ["ip", "link", "set", veth, "up"],
        ["ip", "-n", name, "addr", "add", f"{ns_ip}/30", "dev", "qbdev0"],
        ["ip", "-n", name, "link", "set", "qbdev0", "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            _run(*step)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        _delete_netns(name)
        return None
    return name, ns_ip


def _delete_netns(name: str) -> None:
    # Deleting the namespace destroys its end of the veth pair, and so the pair.
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_banner(address: str, port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1.0) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not answer on {address}:{port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SshServer:
    if not SSHD.exists() or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server not installed (/usr/sbin/sshd): apt-get install openssh-server")
    if os.geteuid() != 0:
        pytest.skip("the SSH tests log in as root with a temporary authorized_keys file: run them as root")
    root = tmp_path_factory.mktemp("sshd")
    host_key = _keygen(root / "ssh_host_ed25519_key")
    user_key = _keygen(root / "user_key")
    other_key = _keygen(root / "other_key")
    (root / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    netns = _make_netns()
    address, port = (netns[1], 22) if netns else ("127.0.0.1", _free_port())
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
MaxStartups 100
LogLevel VERBOSE
"""
    )
    cmd = [str(SSHD), "-D", "-e", "-f", str(config)]
    if netns:
        cmd = ["ip", "netns", "exec", netns[0], *cmd]
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = SshServer(
        address=address,
        port=port,
        root=root,
        host_key_pub=" ".join(Path(f"{host_key}.pub").read_text().split()[:2]),
        user_key=user_key,
        other_key=other_key,
        proc=proc,
        netns=netns[0] if netns else None,
    )
    try:
        _wait_for_banner(address, port, proc, log)
        yield server
    finally:
        for child in server.session_processes():
            child.kill()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if netns:
            _delete_netns(netns[0])


@pytest.fixture
def ssh_home(tmp_path, monkeypatch, sshd) -> Path:
    """A HOME whose ~/.ssh/known_hosts knows the test server; no ssh-agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def make_device(sshd, tmp_path):
    """Build an SSH Device for the test server; keyword arguments override the settings."""

    def make(**settings) -> Device:
        values = {
            "name": "testbox",
            "host": sshd.address,
            "port": sshd.port,
            "user": "root",
            "key": str(sshd.user_key),
            "python": sys.executable,
            "workdir": str(tmp_path / "device-workdir"),
            "connect_timeout": 5.0,
            **settings,
        }
        return Device(**values)

    return make

