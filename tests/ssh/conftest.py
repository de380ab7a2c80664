"""A real OpenSSH server for the SSH tests, with generated keys, torn down afterwards.

sshd runs in its own network namespace (a veth pair with a private /30) when the machine
allows it, so the device's loopback, where the agent binds, is not the host's; otherwise
on 127.0.0.1 with a free port (``QBENCH_TEST_SSH_NETNS=0`` forces that). The test user is
root (we are root) with a key in a temporary authorized_keys file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import psutil
import pytest

from qbench.host.inventory import Device

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0
_NETNS_COUNT = itertools.count()


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
        return [p for p in children if _name(p) in ("sshd", "sshd-session", "dropbear")]

    def stop(self) -> None:
        """Stop the server and its sessions (idempotent)."""
        for child in self.session_processes():
            child.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


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
    pid, n = os.getpid(), next(_NETNS_COUNT)
    name, veth = f"qbssh{pid}n{n}", f"qbh{pid}n{n}"
    # Unique per test process and server, so that concurrent runs on one machine do not collide.
    third, fourth = (pid >> 6) & 255, (pid & 63) * 4
    host_ip, ns_ip = f"10.{213 + n}.{third}.{fourth + 1}", f"10.{213 + n}.{third}.{fourth + 2}"
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


def sshd_config(root: Path, address: str, port: int, host_key: Path, sftp: bool = True,
                password: bool = False) -> str:
    """An sshd_config for a test server; ``sftp=False`` leaves out the SFTP subsystem, ``password=True``
    lets root log in with a password (and with nothing else)."""
    subsystem = "Subsystem sftp internal-sftp\n" if sftp else ""
    auth = ("PermitRootLogin yes\nPasswordAuthentication yes\nPubkeyAuthentication no\n" if password else
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n")
    return f"""Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
{auth}KbdInteractiveAuthentication no
AllowTcpForwarding yes
{subsystem}MaxStartups 100
LogLevel VERBOSE
"""


def require_sshd() -> None:
    if not SSHD.exists() or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server not installed (/usr/sbin/sshd): apt-get install openssh-server")
    if os.geteuid() != 0:
        pytest.skip("the SSH tests log in as root with a temporary authorized_keys file: run them as root")


@contextlib.contextmanager
def running_sshd(root: Path, sftp: bool = True, netns: bool = True) -> Iterator[SshServer]:
    """A real sshd with fresh keys under ``root``, in its own network namespace when allowed; stopped after."""
    require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    host_key = _keygen(root / "ssh_host_ed25519_key")
    user_key = _keygen(root / "user_key")
    other_key = _keygen(root / "other_key")
    (root / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    space = _make_netns() if netns else None
    address, port = (space[1], 22) if space else ("127.0.0.1", _free_port())
    config = root / "sshd_config"
    config.write_text(sshd_config(root, address, port, host_key, sftp))
    cmd = [str(SSHD), "-D", "-e", "-f", str(config)]
    if space:
        cmd = ["ip", "netns", "exec", space[0], *cmd]
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
        netns=space[0] if space else None,
    )
    try:
        _wait_for_banner(address, port, proc, log)
        yield server
    finally:
        server.stop()
        if space:
            _delete_netns(space[0])


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    require_sshd()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


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



DROPBEAR = Path("/usr/sbin/dropbear")
SFTP_SERVER = Path("/usr/lib/sftp-server")  # where dropbear looks for one


@contextlib.contextmanager
def running_dropbear(root: Path) -> Iterator[SshServer]:
    """A real dropbear with no SFTP server, on 127.0.0.1 with fresh keys under ``root``; stopped after.

    dropbear reads ``~root/.ssh/authorized_keys`` and has no option to look elsewhere, so it runs
    in a mount namespace of its own where ``root/.ssh`` is bind-mounted over /root/.ssh: the
    machine's own keys are never touched.
    """
    if not DROPBEAR.exists() or not shutil.which("dropbearkey") or not shutil.which("unshare"):
        pytest.skip("dropbear not installed: apt-get install dropbear-bin")
    if os.geteuid() != 0:
        pytest.skip("the dropbear test logs in as root in a mount namespace of its own: run it as root")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / ".ssh").mkdir(mode=0o700, exist_ok=True)
    host_key = root / "dropbear_ed25519_host_key"
    _run("dropbearkey", "-t", "ed25519", "-f", str(host_key))
    public = subprocess.run(["dropbearkey", "-y", "-f", str(host_key)], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    host_key_pub = next(" ".join(line.split()[:2]) for line in public.splitlines() if line.startswith("ssh-"))
    user_key, other_key = _keygen(root / "user_key"), _keygen(root / "other_key")
    (root / ".ssh" / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    port = _free_port()
    # Debian's dropbear runs OpenSSH's sftp-server when installed (openssh-server brings it):
    # hidden in the namespace, as on a Buildroot or Yocto image without it.
    hide_sftp = f"mount --bind /dev/null {SFTP_SERVER} && " if SFTP_SERVER.exists() else ""
    Path("/root/.ssh").mkdir(mode=0o700, exist_ok=True)
    inner = (f"{hide_sftp}mount --bind {root / '.ssh'} /root/.ssh && exec {DROPBEAR} -F -E -s -p 127.0.0.1:{port} "
             f"-r {host_key} -P {root}/dropbear.pid")
    log = root / "dropbear.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = SshServer(address="127.0.0.1", port=port, root=root, host_key_pub=host_key_pub,
                       user_key=user_key, other_key=other_key, proc=proc, netns=None)
    try:
        _wait_for_banner(server.address, port, proc, log)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_password_sshd(root: Path, password: str) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 where root logs in with ``password`` only (no keys); stopped after.

    sshd (without PAM) checks a password against /etc/shadow, so it runs in a mount namespace of its
    own where a file with root's hash of ``password`` is bind-mounted over /etc/shadow: the
    machine's own password file is never touched.
    """
    require_sshd()
    if not shutil.which("unshare") or not shutil.which("openssl"):
        pytest.skip("the password sshd needs unshare and openssl")
    root.mkdir(parents=True, exist_ok=True)
    host_key = _keygen(root / "ssh_host_ed25519_key")
    digest = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    (root / "shadow").write_text(f"root:{digest}:20000:0:99999:7:::\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(sshd_config(root, "127.0.0.1", port, host_key, password=True))
    inner = f"mount --bind {root / 'shadow'} /etc/shadow && exec {SSHD} -D -e -f {config}"
    log = root / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = SshServer(address="127.0.0.1", port=port, root=root,
                       host_key_pub=" ".join(Path(f"{host_key}.pub").read_text().split()[:2]),
                       user_key=root / "no-key", other_key=root / "no-key", proc=proc, netns=None)
    try:
        _wait_for_banner(server.address, port, proc, log)
        yield server
    finally:
        server.stop()
