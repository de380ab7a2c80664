"""The agent on a device reached over SSH (paramiko).

``deploy()`` checks the device's Python and packages and uploads the agent bundle
into ``workdir`` when the device's copy is missing or stale. ``start()`` runs the
bundle bound to the device's loopback with ``--exit-on-stdin-eof`` on a channel kept
open for the whole run (closing it ends the agent) and forwards a local port to it
through the same SSH connection. Every failure becomes one UserError line.
"""

from __future__ import annotations

import base64
import collections
import errno
import getpass
import hashlib
import logging
import shlex
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import paramiko

from qbench.host.errors import UserError
from qbench.host.inventory import Device

from .base import READY_PREFIX, AgentTransport, Endpoint, RunKeys, agent_args
from .bundle import Bundle, current_bundle
from .exec_copy import EXEC, SFTP, ExecCopyError, exec_copy
from .forward import Forwarder
from .probe import VERSION_SNIPPET, ProbeReport, check_python_version, probe_argument, probe_source

log = logging.getLogger(__name__)
# paramiko logs every refused channel and handshake traceback; our UserErrors already say what
# failed, so its records reach the terminal only when the application configures logging.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_STDERR_LINES = 50
_DISK_MARGIN_BYTES = 1 << 20
_KEEPALIVE_S = 5
_STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class DeployResult:
    """Where the bundle is on the device and whether this deploy uploaded it."""

    path: str
    sha256: str
    uploaded: bool


@dataclass(frozen=True)
class Target:
    """Where to connect, after ``~/.ssh/config`` is applied."""

    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey):
        super().__init__(key.get_name())
        self.key = key


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host, or (opted in) trust it and append it to known_hosts like ``accept-new``."""

    def __init__(self, accept: bool, known_hosts: Path):
        self._accept = accept
        self._known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self._accept:
            raise _UnknownHostKey(key)
        self._known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self._known_hosts, "a", encoding="utf-8") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "qbench: permanently added the host key of %s (%s) to %s", hostname, fingerprint(key), self._known_hosts
        )


class SSHTransport(AgentTransport):
    """Deploys and runs the agent on ``device`` over SSH.

    Args:
        device: an inventory device with ``transport: ssh``.
        accept_new_host: trust (and record) an unknown host key, like ``--accept-new-host``.
        ready_timeout_s: bound on the agent's start, up to its ready line.
        command_timeout_s: bound on each helper command (version check, probe, kill).
        stop_wait_s: how long ``stop()`` lets the agent exit on its own before killing it.
    """

    def __init__(
        self,
        device: Device,
        accept_new_host: bool = False,
        ready_timeout_s: float = 60.0,
        command_timeout_s: float = 60.0,
        stop_wait_s: float = 5.0,
    ):
        self.device = device
        self._accept = accept_new_host or device.accept_unknown_host
        self._ready_timeout = ready_timeout_s
        self._command_timeout = command_timeout_s
        self._stop_wait = stop_wait_s
        self.target = self._resolve_target()
        self.label = f"ssh {self.target.user}@{self.target.hostname}:{self.target.port}"
        self._client: Optional[paramiko.SSHClient] = None
        self._deployed: Optional[DeployResult] = None
        self._workdir: Optional[str] = None
        self._chan: Optional[paramiko.Channel] = None
        self._pid: Optional[int] = None
        self._forwarder: Optional[Forwarder] = None
        self._readers: list[threading.Thread] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._started = False
        self._copy_method = ""  # sftp | exec, known once tried

    # ---- connection -------------------------------------------------------------

    def _resolve_target(self) -> Target:
        device = self.device
        config_path = Path("~/.ssh/config").expanduser()
        entry: dict = {}
        if config_path.is_file():
            try:
                entry = paramiko.SSHConfig.from_path(str(config_path)).lookup(device.host or "")
            except (paramiko.ConfigParseError, OSError, ValueError) as exc:
                raise UserError(f"{config_path}: cannot parse: {exc}") from exc
        port = device.port if "port" in device.model_fields_set else int(entry.get("port", device.port))
        keys: list[str] = []
        if device.key is not None:
            if not device.key.is_file():
                raise UserError(f"device {device.name!r}: key file {device.key} does not exist")
            keys.append(str(device.key))
        keys += [str(Path(k).expanduser()) for k in entry.get("identityfile", []) if Path(k).expanduser().is_file()]
        return Target(
            hostname=entry.get("hostname", device.host or ""),
            port=port,
            user=device.user or entry.get("user") or getpass.getuser(),
            key_files=tuple(dict.fromkeys(keys)),
        )

    def _where(self) -> str:
        return f"{self.device.name} ({self.target.user}@{self.target.hostname}:{self.target.port})"

    def connect(self) -> paramiko.SSHClient:
        """Connect and authenticate (once); every failure is a UserError saying which."""
        if self._client is not None:
            return self._client
        target, timeout = self.target, self.device.connect_timeout
        known_hosts = Path("~/.ssh/known_hosts").expanduser()
        client = paramiko.SSHClient()
        for path in (Path("/etc/ssh/ssh_known_hosts"), known_hosts):
            if path.is_file():
                client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(_HostKeyPolicy(self._accept, known_hosts))
        password = self.device.password()
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                password=password,
                key_filename=list(target.key_files) or None,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except Exception as exc:  # noqa: BLE001 - mapped to one line below, the rest re-raised
            # paramiko ends a missing banner in a vague "No existing session": its transport says more
            got_banner = getattr(client.get_transport(), "remote_version", None) != ""
            client.close()
            error = self._connect_error(exc, got_banner)
            if error is None:
                raise
            raise error from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(_KEEPALIVE_S)
        self._client = client
        return client

    def _connect_error(self, exc: Exception, got_banner: bool = True) -> Optional[UserError]:
        where, target = self._where(), self.target
        if isinstance(exc, _UnknownHostKey):
            return UserError(
                f"{where}: unknown host key ({exc.key.get_name()} {fingerprint(exc.key)}) not in ~/.ssh/known_hosts; "
                "check it and pass --accept-new-host (or set accept_unknown_host: true) to trust it"
            )
        if isinstance(exc, paramiko.BadHostKeyException):
            return UserError(
                f"{where}: HOST KEY MISMATCH: the device offered {fingerprint(exc.key)}, known_hosts has "
                f"{fingerprint(exc.expected_key)}; if the device was reinstalled, remove the old key with "
                f"ssh-keygen -R '{target.known_hosts_name}'"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return UserError(f"{where}: the key is passphrase-protected; load it into ssh-agent (ssh-add) first")
        if isinstance(exc, paramiko.AuthenticationException):
            tried = ", ".join([*target.key_files, "ssh-agent", "~/.ssh/id_*"])
            if self.device.password_env:
                tried += f", the password in ${self.device.password_env}"
            return UserError(f"{where}: authentication failed (tried {tried})")
        if isinstance(exc, socket.gaierror):
            return UserError(f"{where}: cannot resolve host name {target.hostname!r}: {exc.strerror}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return UserError(f"{where}: connection timed out after {self.device.connect_timeout:g} s")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            codes = {getattr(e, "errno", None) for e in exc.errors.values()}
            if codes == {errno.ECONNREFUSED}:
                return UserError(f"{where}: connection refused (is sshd running on port {target.port}?)")
            return UserError(f"{where}: unreachable: {exc}")
        if isinstance(exc, OSError):
            return UserError(f"{where}: unreachable: {exc.strerror or exc}")
        if isinstance(exc, paramiko.SSHException) and (not got_banner or "banner" in str(exc).lower()):
            return UserError(f"{where}: no SSH banner from {target.hostname}:{target.port} within "
                             f"{self.device.connect_timeout:g} s (is it an SSH server?)")
        if isinstance(exc, paramiko.SSHException):
            return UserError(f"{where}: SSH handshake failed: {exc}")
        return None

    def _transport(self) -> paramiko.Transport:
        transport = self.connect().get_transport()
        if transport is None or not transport.is_active():
            raise UserError(f"{self._where()}: SSH connection lost")
        return transport

    def run_command(self, command: str, stdin: bytes = b"", timeout_s: Optional[float] = None) -> tuple[int, str, str]:
        """Run ``command`` through the remote shell; (exit status, stdout, stderr), all bounded in time."""
        timeout = timeout_s or self._command_timeout
        chan = None
        try:
            chan = self._transport().open_session(timeout=self.device.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = _read_all(chan, time.monotonic() + timeout)
            if not chan.status_event.wait(_STOP_WAIT_S):
                raise socket.timeout()
            return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
        except (socket.timeout, TimeoutError):
            raise UserError(f"{self._where()}: command timed out after {timeout:g} s: {command[:80]}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise UserError(f"{self._where()}: SSH connection lost while running a command: {exc}") from exc
        finally:
            if chan is not None:
                chan.close()

    # ---- probe and deploy -------------------------------------------------------

    def python_version(self) -> str:
        """The device Python's version; a UserError if it is missing or too old."""
        python = self.device.remote_python()
        rc, out, err = self.run_command(f"{python} -c {shlex.quote(VERSION_SNIPPET)}")
        if rc in (126, 127):
            raise UserError(
                f"{self._where()}: no Python at {python!r} on the device ({_last_line(err)}); "
                "install python3 or set 'python:' in devices.yaml"
            )
        if rc != 0:
            raise UserError(f"{self._where()}: {python!r} failed (exit {rc}): {_last_line(err)}")
        return check_python_version(out, self.device.name, python)

    def probe(self) -> ProbeReport:
        """Packages, disk, memory... of the device (see ``device_probe.py``); check the version first."""
        python = self.device.remote_python()
        arg = probe_argument(self.device.workdir, self.device.runtime)
        rc, out, err = self.run_command(f"{python} - {shlex.quote(arg)}", stdin=probe_source().encode())
        if rc != 0:
            raise UserError(f"{self._where()}: the device probe failed (exit {rc}): {_last_line(err)}")
        return ProbeReport.parse(out, self.device.name)

    def deploy(self) -> DeployResult:
        """Make sure the device has this host's agent bundle; upload it if missing or stale.

        Raises:
            UserError: no or too old Python, missing packages (with the pip command), disk full, ...
        """
        self.python_version()
        report = self.probe()
        report.require_packages(self._where(), self.device.remote_python(), self.device.runtime)
        bundle = current_bundle()
        path = f"{report.workdir}/{bundle.name}"
        self._workdir = report.workdir
        uploaded = report.bundles.get(bundle.name) != len(bundle.data)
        if uploaded:
            if report.disk_free_bytes < len(bundle.data) + _DISK_MARGIN_BYTES:
                raise UserError(
                    f"{self._where()}: disk full in {report.workdir}: {report.disk_free_bytes // 1024} KiB free, "
                    f"the agent needs {(len(bundle.data) + _DISK_MARGIN_BYTES) // 1024} KiB"
                )
            self._upload(bundle, report.workdir, path)
        self._deployed = DeployResult(path=path, sha256=bundle.sha256, uploaded=uploaded)
        return self._deployed

    def copy_method(self) -> str:
        """How files reach this device: ``sftp``, or ``exec`` when the server has no SFTP subsystem."""
        sftp = self._open_sftp()
        if sftp is not None:
            sftp.close()
        return self._copy_method

    def _open_sftp(self) -> Optional[paramiko.SFTPClient]:
        """An SFTP client, or None (remembered) when the server refuses the SFTP subsystem."""
        if self._copy_method == EXEC:
            return None
        client = self.connect()
        try:
            sftp = client.open_sftp()
        except (paramiko.SSHException, EOFError) as exc:
            self._transport()  # a lost connection is a UserError; a refused subsystem is not
            log.info("%s: no SFTP subsystem (%s); copying over an exec channel", self._where(), exc)
            self._copy_method = EXEC
            # dropbear, whose failed subsystem is a shell that could not exec sftp-server, refuses
            # some channels opened right after it on the same connection: start afresh.
            client.close()
            self._client = None
            return None
        except OSError as exc:
            raise UserError(f"{self._where()}: cannot open SFTP to upload the agent: {exc}") from exc
        self._copy_method = SFTP
        return sftp

    def _upload(self, bundle: Bundle, workdir: str, path: str) -> None:
        sftp = self._open_sftp()
        if sftp is None:
            self._upload_exec(bundle, workdir, path)
        else:
            self._upload_sftp(sftp, bundle, workdir, path)

    def _upload_exec(self, bundle: Bundle, workdir: str, path: str) -> None:
        try:
            exec_copy(self.run_command, self.device.remote_python(), bundle.data, workdir, path)
        except ExecCopyError as exc:
            what = "disk full in" if exc.disk_full else "cannot upload the agent (over exec) to"
            raise UserError(f"{self._where()}: {what} {workdir}: {exc}") from exc

    def _upload_sftp(self, sftp: paramiko.SFTPClient, bundle: Bundle, workdir: str, path: str) -> None:
        # Written under a temporary name then renamed: a bundle with its final name is always whole.
        partial = f"{path}.{uuid.uuid4().hex[:8]}.part"
        try:
            sftp.get_channel().settimeout(self._command_timeout)
            _sftp_makedirs(sftp, workdir)
            with sftp.open(partial, "wb") as handle:
                handle.set_pipelined(True)
                handle.write(bundle.data)
            sftp.posix_rename(partial, path)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            try:
                sftp.remove(partial)
            except (OSError, EOFError, paramiko.SSHException):
                pass
            full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            what = "disk full in" if full else "cannot upload the agent to"
            raise UserError(f"{self._where()}: {what} {workdir}: {exc}") from exc
        finally:
            sftp.close()

    # ---- the agent --------------------------------------------------------------

    def agent_command(self, runtimes: Sequence[str] = ()) -> str:
        """The remote shell command: print the shell's pid, then become the agent (same pid)."""
        assert self._deployed is not None and self._workdir is not None
        device = self.device
        args = [self._deployed.path, *agent_args(f"{self._workdir}/cache", device.threads, device.cpus,
                                                 device.memory_limit_mb, runtimes, self.delegate_paths,
                                                 device.cache_max_mb)]
        inner = f"echo $$; exec {device.remote_python()} {' '.join(shlex.quote(a) for a in args)}"
        return f"sh -c {shlex.quote(inner)}"

    def start(self, runtimes: Sequence[str] = ()) -> Endpoint:
        """Deploy if needed, start the agent, forward a local port to it; return the local endpoint."""
        if self._started:
            raise RuntimeError("SSHTransport.start() called twice")
        self._started = True
        if self._deployed is None:
            self.deploy()
        try:
            chan = self._transport().open_session(timeout=self.device.connect_timeout)
            chan.settimeout(0.5)
            chan.exec_command(self.agent_command(runtimes))
            keys = RunKeys.fresh()
            chan.sendall(keys.stdin_line())  # on its stdin: the device's other users cannot read it (argv they can)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise UserError(f"{self._where()}: cannot start the agent: {exc}") from exc
        self._chan = chan
        self._readers.append(_start_thread(self._read_stderr, "qbench-ssh-stderr"))
        remote_port = self._await_ready(chan)
        self._readers.append(_start_thread(self._drain_stdout, "qbench-ssh-stdout"))
        self._forwarder = Forwarder(self._transport(), remote_port)
        return Endpoint(f"tcp://127.0.0.1:{self._forwarder.local_port}", keys)

    def _await_ready(self, chan: paramiko.Channel) -> int:
        deadline = time.monotonic() + self._ready_timeout
        buffer = b""
        while time.monotonic() < deadline:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if self._pid is None and text.isdigit():
                    self._pid = int(text)
                elif text.startswith(READY_PREFIX):
                    return _port_of(text[len(READY_PREFIX):], self._where())
            try:
                data = chan.recv(4096)
            except socket.timeout:
                continue
            if not data:
                break
            buffer += data
        else:
            self.stop()
            raise UserError(
                f"{self._where()}: the agent did not report ready within {self._ready_timeout:g} s"
                f"{self._tail_suffix()}"
            )
        status = chan.recv_exit_status() if chan.status_event.wait(_STOP_WAIT_S) else None
        self.stop()
        raise UserError(f"{self._where()}: the agent exited (status {status}) before it was ready{self._tail_suffix()}")

    def _read_stderr(self) -> None:
        chan, partial = self._chan, b""
        assert chan is not None
        while True:
            try:
                data = chan.recv_stderr(4096)
            except socket.timeout:
                continue
            except (OSError, EOFError):
                break
            if not data:
                break
            *lines, partial = (partial + data).split(b"\n")
            self._stderr.extend(line.decode(errors="replace") for line in lines)
        if partial:
            self._stderr.append(partial.decode(errors="replace"))

    def _drain_stdout(self) -> None:
        # The agent logs to stderr, but an unread stdout would fill the SSH window and block it.
        chan = self._chan
        assert chan is not None
        while True:
            try:
                if not chan.recv(4096):
                    return
            except socket.timeout:
                continue
            except (OSError, EOFError):
                return

    def problem(self) -> Optional[str]:
        """Why the agent is unreachable (connection lost, agent exited), or None while all is well."""
        if self._chan is None:
            return None
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            return f"SSH connection to {self._where()} lost"
        if self._chan.exit_status_ready():
            return f"the agent on {self.device.name} exited with status {self._chan.recv_exit_status()}"
        return None

    def stderr_tail(self, lines: int = 20) -> str:
        """The agent's last stderr lines, then what went wrong with the connection, if anything."""
        tail = list(self._stderr)[-lines:]
        problem = self.problem()
        return "\n".join(tail + ([f"[qbench] {problem}"] if problem else []))

    def _tail_suffix(self) -> str:
        tail = self.stderr_tail()
        return f"; agent stderr:\n{tail}" if tail else ""

    def stop(self) -> None:
        """Stop the agent (stdin EOF, then kill by pid if it lingers) and close the connection."""
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        chan, self._chan = self._chan, None
        if chan is not None:
            self._end_agent(chan)
        for thread in self._readers:
            thread.join(2.0)
        self._readers = []
        if self._client is not None:
            self._client.close()
            self._client = None

    def _end_agent(self, chan: paramiko.Channel) -> None:
        try:
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        exited = chan.status_event.wait(self._stop_wait)
        transport = self._client.get_transport() if self._client else None
        if not exited and self._pid and transport is not None and transport.is_active():
            # The agent ignored its stdin closing: end it and its workers by pid.
            pid = self._pid
            script = (
                f"pkill -TERM -P {pid} 2>/dev/null; kill -TERM {pid} 2>/dev/null; i=0; "
                f"while kill -0 {pid} 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; "
                f"pkill -KILL -P {pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true"
            )
            try:
                self.run_command(script, timeout_s=15.0)
            except UserError as exc:
                log.warning("could not kill the agent (pid %s) on %s: %s", pid, self.device.name, exc)
        chan.close()


def _read_all(chan: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    while time.monotonic() < deadline:
        progressed = False
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            progressed = True
        if chan.recv_ready():
            out += chan.recv(65536)
            progressed = True
        if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        if chan.closed:
            raise EOFError("channel closed")
        if not progressed:
            time.sleep(0.01)
    raise socket.timeout()


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = path.split("/")
    for end in range(2, len(parts) + 1):
        prefix = "/".join(parts[:end])
        try:
            sftp.stat(prefix)
        except FileNotFoundError:
            sftp.mkdir(prefix, mode=0o700)


def _port_of(endpoint: str, where: str) -> int:
    try:
        return int(endpoint.strip().rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise UserError(f"{where}: the agent reported an odd endpoint {endpoint!r}") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def _start_thread(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
