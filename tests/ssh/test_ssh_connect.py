"""Connecting to a real sshd: host keys, authentication, ~/.ssh/config, unreachable ports."""

from __future__ import annotations

import socket
import sys
import threading

import pytest

from qbench.host.errors import UserError
from qbench.host.inventory import Device
from qbench.host.transport.ssh import SSHTransport

pytestmark = pytest.mark.ssh


def _uname(transport: SSHTransport) -> str:
    rc, out, _ = transport.run_command("uname -s")
    assert rc == 0
    return out.strip()


def test_known_host_with_key_connects_and_runs_a_command(ssh_home, make_device):
    transport = SSHTransport(make_device())
    try:
        assert _uname(transport) == "Linux"
    finally:
        transport.stop()


def test_unknown_host_key_is_refused_with_its_fingerprint(ssh_home, make_device):
    (ssh_home / ".ssh" / "known_hosts").write_text("")
    with pytest.raises(UserError, match=r"unknown host key \(ssh-ed25519 SHA256:\S+\).*--accept-new-host"):
        SSHTransport(make_device()).connect()


def test_accepting_a_new_host_records_it_for_the_next_connection(ssh_home, make_device, sshd):
    known_hosts = ssh_home / ".ssh" / "known_hosts"
    known_hosts.write_text("")
    first = SSHTransport(make_device(), accept_new_host=True)
    try:
        first.connect()
    finally:
        first.stop()
    assert known_hosts.read_text().split() == sshd.known_hosts_line.split()
    second = SSHTransport(make_device())  # no opt-in needed any more
    try:
        assert _uname(second) == "Linux"
    finally:
        second.stop()


def test_device_setting_accept_unknown_host_opts_in(ssh_home, make_device):
    (ssh_home / ".ssh" / "known_hosts").write_text("")
    transport = SSHTransport(make_device(accept_unknown_host=True))
    try:
        assert _uname(transport) == "Linux"
    finally:
        transport.stop()


def test_host_key_mismatch_names_both_keys_and_the_fix(ssh_home, make_device, sshd):
    # Another server's key recorded for this address: what a reinstalled (or spoofed) device looks like.
    other_pub = " ".join(sshd.other_key.with_suffix(".pub").read_text().split()[:2])
    name = sshd.known_hosts_line.split()[0]
    (ssh_home / ".ssh" / "known_hosts").write_text(f"{name} {other_pub}\n")
    with pytest.raises(UserError, match=r"HOST KEY MISMATCH.*ssh-keygen -R"):
        SSHTransport(make_device()).connect()


def test_unauthorized_key_is_an_authentication_failure(ssh_home, make_device, sshd):
    with pytest.raises(UserError, match=r"authentication failed \(tried .*other_key"):
        SSHTransport(make_device(key=str(sshd.other_key))).connect()


def test_missing_key_file_is_named(ssh_home, make_device, tmp_path):
    with pytest.raises(UserError, match="key file .*nope does not exist"):
        SSHTransport(make_device(key=str(tmp_path / "nope")))


def test_unset_password_variable_is_named(ssh_home, make_device, monkeypatch):
    monkeypatch.delenv("QBENCH_TEST_NO_SUCH_PASSWORD", raising=False)
    with pytest.raises(UserError, match=r"\$QBENCH_TEST_NO_SUCH_PASSWORD, which is not set"):
        SSHTransport(make_device(password_env="QBENCH_TEST_NO_SUCH_PASSWORD")).connect()


def test_ssh_config_supplies_hostname_port_user_and_identity(ssh_home, sshd, make_device):
    (ssh_home / ".ssh" / "config").write_text(
        f"Host lab-box\n  HostName {sshd.address}\n  Port {sshd.port}\n  User root\n  IdentityFile {sshd.user_key}\n"
    )
    # No port, user or key in devices.yaml: ~/.ssh/config decides them.
    transport = SSHTransport(Device(name="lab", host="lab-box", python=sys.executable, connect_timeout=5.0))
    try:
        assert (transport.target.hostname, transport.target.port) == (sshd.address, sshd.port)
        assert _uname(transport) == "Linux"
    finally:
        transport.stop()


def test_connection_refused(ssh_home, make_device):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connecting is refused
        with pytest.raises(UserError, match="connection refused"):
            SSHTransport(make_device(host="127.0.0.1", port=port)).connect()


def test_server_that_never_speaks_is_no_banner_in_bounded_time(ssh_home, make_device):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accepted = []
        threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
        port = server.getsockname()[1]
        device = make_device(host="127.0.0.1", port=port, connect_timeout=1.0)
        with pytest.raises(UserError, match=f"no SSH banner from 127.0.0.1:{port} within 1 s"):
            SSHTransport(device).connect()
        for conn, _ in accepted:
            conn.close()

