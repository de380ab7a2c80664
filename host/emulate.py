"""An emulated arm64 board: Debian's aarch64 CPython run by QEMU user-mode emulation.

The board is a folder (a sysroot) built once and cached:

- Debian bookworm arm64 packages (CPython 3.11 and the libraries it links), fetched with
  ``apt-get download`` through a private apt configuration (the machine's own apt state and
  architectures are left alone) and unpacked with ``dpkg-deb -x``;
- aarch64 wheels of numpy, pyzmq, onnxruntime and ai-edge-litert in ``site-packages``,
  installed by the host's pip with ``--platform ... --only-binary=:all: --target``;
- ``bin/python3``, a shell wrapper that runs that CPython under ``qemu-aarch64-static -cpu
  cortex-a72 -L ROOT``; it is what devices.yaml names as the device's ``python``;
- ``agent-src/qbench/{agent,protocols}``, links to this installation's agent sources.

The board runs the real ARM kernels of the runtimes, so its int8 results are those of an
ARM CPU; its timings are emulation timings, and its devices.yaml entry says so
(``emulation: ...``) so that reports label them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import UserError

CACHE_ENV = "QBENCH_EMULATE_CACHE"
QEMU = "qemu-aarch64-static"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
STAMP = ".qbench-board.json"
PYTHON = "python3.11"

# CPython 3.11 and what its stdlib extension modules link, from `apt-cache depends --recurse`
# less what a Python process never loads (dpkg, tar, perl and mailcap come in through
# mime-support); libstdc++6 is for the C++ runtimes in the wheels.
DEBIAN_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "media-types",
    "libc6", "libgcc-s1", "gcc-12-base", "libstdc++6", "libcrypt1", "zlib1g", "libbz2-1.0",
    "liblzma5", "libexpat1", "libffi8", "libssl3", "libsqlite3-0", "libuuid1", "libncursesw6",
    "libtinfo6", "libreadline8", "readline-common", "libdb5.3", "libnsl2", "libtirpc3",
    "libtirpc-common", "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0",
    "libkeyutils1", "libcom-err2",
)

#: distribution name -> module the smoke test imports
WHEELS = {"numpy": "numpy", "pyzmq": "zmq", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert"}

# What the runtimes' CPU detection reads. QEMU 7.2 does not emulate /proc/cpuinfo for
# aarch64 guests, so without this file they parse the host's x86 one, and onnxruntime
# >= 1.20 and ai-edge-litert 2.x crash at import; `-L ROOT` makes the guest read ours.
_CPUINFO_ENTRY = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

"""

_WRAPPER = """#!/bin/sh
# qbench emulated arm64 board (`qbench emulate arm64`): Debian's aarch64 CPython under
# QEMU user-mode emulation. Timings measured through it are emulation timings.
# -0 makes sys.executable this script, so child Pythons run emulated too; -S keeps the
# host's dist-packages (x86 code that -L would let through) off sys.path.
root={root}
PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}$root/site-packages:$root/agent-src"
PYTHONNOUSERSITE=1
export PYTHONPATH PYTHONNOUSERSITE
exec {qemu} -cpu {cpu} -L "$root" -0 "$0" "$root/usr/bin/{python}" -S "$@"
"""

_SMOKE = """
import json, platform, sys
from importlib import import_module, metadata
mods = json.loads(sys.argv[1])
info = {"machine": platform.machine(), "python": platform.python_version(), "versions": {}}
for dist, mod in mods.items():
    import_module(mod)
    info["versions"][dist] = metadata.version(dist)
print(json.dumps(info))
"""

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class BoardSpec:
    """What goes into the board; a different spec means a rebuild.

    Args:
        wheels: pip requirements installed as aarch64 wheels.
        cpu: the QEMU CPU model (Cortex-A72 is the Raspberry Pi 4's).
        suite: the Debian release the packages come from.
        mirror, security_mirror: Debian archives for ``suite`` and its security updates.
        packages: Debian arm64 packages unpacked into the sysroot.
    """

    wheels: tuple[str, ...]
    cpu: str = "cortex-a72"
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    packages: tuple[str, ...] = DEBIAN_PACKAGES

    def key(self) -> str:
        """A short hash of the spec, recorded in the board's stamp."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Board:
    """A built board: its folder and what the smoke test found inside."""

    root: Path
    spec: BoardSpec
    python_version: str
    versions: dict[str, str]

    @property
    def python(self) -> Path:
        """The wrapper that runs the board's Python."""
        return self.root / "bin" / "python3"

    @property
    def emulation(self) -> str:
        """The label that marks the device's timings as emulation timings."""
        return f"qemu-aarch64 {self.spec.cpu}"

    def device_entry(self) -> dict:
        """The devices.yaml settings of a local device running the agent on this board."""
        python = str(self.python)
        return {
            "transport": "local",
            "python": python if shlex.quote(python) == python else [python],
            "emulation": self.emulation,
            "tags": ["arm64", "emulated"],
        }


def default_wheels() -> tuple[str, ...]:
    """One requirement per runtime package, pinned to the version this host runs.

    With the same versions on both sides, an x86 vs arm64 difference comes from the CPU
    kernels alone; a package missing here is taken at its newest version.
    """
    reqs = []
    for dist in WHEELS:
        try:
            reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(dist)
    return tuple(reqs)


def wheels_with(overrides: list[str]) -> tuple[str, ...]:
    """:func:`default_wheels`, with each requirement of ``overrides`` replacing the one for its package.

    A requirement for any other package is added (it must have an aarch64 wheel).
    """
    reqs = {_dist(req): req for req in default_wheels()}
    reqs.update({_dist(req): req for req in overrides})
    return tuple(reqs.values())


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def default_root() -> Path:
    """``$QBENCH_EMULATE_CACHE/arm64``, else ``<user cache dir>/qbench/emulate/arm64``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "arm64"
    import platformdirs

    return Path(platformdirs.user_cache_dir("qbench")) / "emulate" / "arm64"


def ensure_arm64(root: Optional[Path] = None, spec: Optional[BoardSpec] = None, rebuild: bool = False,
                 log: Log = lambda message: None) -> Board:
    """The arm64 board at ``root``, built first if missing, stale or ``rebuild``.

    Idempotent and safe to call from concurrent processes (a lock file serialises builds).
    The agent links and the CPU description are refreshed on every call, cheaply.

    Args:
        root: the board's folder (default :func:`default_root`).
        spec: what to put in it (default: :func:`default_wheels` and the defaults of BoardSpec).
        rebuild: build even when a current board is there.
        log: receives one line per build step.

    Raises:
        UserError: a tool is missing, a download or the smoke test failed.
    """
    _require(QEMU, "qemu-user-static")  # a cached board is no use without it either
    root = Path(root or default_root()).expanduser().absolute()
    spec = spec or BoardSpec(wheels=default_wheels())
    root.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(root.with_name(root.name + ".lock")):
        board = None if rebuild else _read_stamp(root, spec)
        if board is None:
            board = _build(root, spec, log)
        _refresh(root)
    return board


def _read_stamp(root: Path, spec: BoardSpec) -> Optional[Board]:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("spec_key") != spec.key():
        return None
    return Board(root, spec, stamp["python"], stamp["versions"])


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_tools() -> None:
    """Raise a UserError naming the Debian package of the first missing tool."""
    for tool, package in ((QEMU, "qemu-user-static"), ("apt-get", "apt"), ("dpkg-deb", "dpkg")):
        _require(tool, package)
    if not KEYRING.is_file():
        raise UserError(f"{KEYRING} not found: apt-get install debian-archive-keyring")
    if importlib.util.find_spec("pip") is None:
        raise UserError(f"pip is not installed in {sys.executable}: it installs the board's aarch64 wheels")


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise UserError(f"{tool} not found: the emulated arm64 board needs Debian's {package} "
                        f"(apt-get install {package})")


def _build(root: Path, spec: BoardSpec, log: Log) -> Board:
    check_tools()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root.parent) as tmp:
        staging = Path(tmp) / "root"
        log(f"downloading {len(spec.packages)} Debian {spec.suite} arm64 packages")
        debs = _apt_download(Path(tmp), spec)
        log(f"unpacking them into {root}")
        for deb in debs:
            run_step(["dpkg-deb", "-x", str(deb), str(staging)], f"unpacking {deb.name}")
        log(f"installing aarch64 wheels: {' '.join(spec.wheels)}")
        _pip_install(staging / "site-packages", spec.wheels)
        _write_sysroot_files(staging, root, spec)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    _refresh(root)
    log("checking the board's Python under QEMU")
    board = _smoke_test(root, spec)
    (root / STAMP).write_text(json.dumps({"spec_key": board.spec.key(), "spec": dataclasses.asdict(spec),
                                          "python": board.python_version, "versions": board.versions}, indent=1))
    log(f"board ready in {time.monotonic() - start:.0f} s: {root} ({_size_mb(root):.0f} MB)")
    return board


def _apt_download(work: Path, spec: BoardSpec) -> list[Path]:
    """Fetch ``spec.packages`` for arm64 with an apt of its own (own sources, lists and cache)."""
    etc, state, cache, debs = (work / "apt" / d for d in ("etc", "state", "cache", "debs"))
    for folder in (etc / "sources.list.d", etc / "preferences.d", state / "lists" / "partial",
                   cache / "archives" / "partial", debs):
        folder.mkdir(parents=True)
    (state / "status").touch()
    options = f"[arch=arm64 signed-by={KEYRING}]"
    (etc / "sources.list").write_text(
        f"deb {options} {spec.mirror} {spec.suite} main\n"
        f"deb {options} {spec.security_mirror} {spec.suite}-security main\n")
    apt = ["apt-get", "-q", "-o", f"Dir::Etc={etc}", "-o", f"Dir::State={state}",
           "-o", f"Dir::State::status={state / 'status'}", "-o", f"Dir::Cache={cache}",
           "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
           "-o", "Debug::NoLocking=1", "-o", f"APT::Sandbox::User={pwd.getpwuid(os.getuid()).pw_name}"]
    run_step([*apt, "update"], f"apt-get update for Debian {spec.suite} arm64")
    run_step([*apt, "download", *spec.packages], "apt-get download of the arm64 packages", cwd=debs)
    return sorted(debs.glob("*.deb"))


def _pip_install(target: Path, wheels: tuple[str, ...]) -> None:
    # pip does not widen --platform to older glibc levels: list every manylinux level that
    # Debian bookworm's glibc (2.36) can run.
    platforms = [arg for minor in range(17, 37) for arg in ("--platform", f"manylinux_2_{minor}_aarch64")]
    run_step([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--target", str(target), "--only-binary=:all:", "--no-deps", *platforms, "--platform",
          "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          *wheels], "pip install of the aarch64 wheels")


def _write_sysroot_files(staging: Path, root: Path, spec: BoardSpec) -> None:
    """The wrapper, and empty stand-ins for folders whose host copies -L must not expose."""
    wrapper = staging / "bin" / "python3"
    wrapper.parent.mkdir()
    wrapper.write_text(_WRAPPER.format(root=shlex.quote(str(root)), qemu=QEMU, cpu=spec.cpu, python=PYTHON))
    wrapper.chmod(0o755)
    for folder in ("usr/lib/python3/dist-packages", "usr/local/lib/python3.11/dist-packages", "proc"):
        (staging / folder).mkdir(parents=True, exist_ok=True)


def _refresh(root: Path) -> None:
    """Point agent-src at this installation's agent and describe as many CPUs as the host has."""
    cpuinfo = "".join(_CPUINFO_ENTRY.format(n=n) for n in range(os.cpu_count() or 1))
    _replace_text(root / "proc" / "cpuinfo", cpuinfo)
    link_agent_sources(root / "agent-src")


def link_agent_sources(folder: Path) -> None:
    """Make ``folder/qbench/{agent,protocols}`` links to this installation's agent sources.

    With ``folder`` on its ``sys.path``, another interpreter runs this host's agent, nothing installed.
    """
    package = folder / "qbench"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("agent", "protocols"):
        # find_spec locates the package without importing it: the host never imports the agent.
        found = importlib.util.find_spec(f"qbench.{name}")
        if found is None or not found.submodule_search_locations:
            raise UserError(f"cannot locate the installed qbench.{name} sources")
        _replace_symlink(package / name, Path(list(found.submodule_search_locations)[0]))


def _replace_text(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _replace_symlink(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)


def _smoke_test(root: Path, spec: BoardSpec) -> Board:
    mods = {_dist(req): WHEELS.get(_dist(req), _dist(req).replace("-", "_")) for req in spec.wheels}
    out = run_step([str(root / "bin" / "python3"), "-c", _SMOKE, json.dumps(mods)],
               "the smoke test of the board's Python (imports under QEMU)", timeout=300)
    info = json.loads(out.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise UserError(f"the board's Python reports machine {info['machine']!r}, not aarch64")
    return Board(root, spec, info["python"], info["versions"])


def run_step(cmd: list[str], what: str, cwd: Optional[Path] = None, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise UserError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _size_mb(root: Path) -> float:
    return sum(p.lstat().st_size for p in root.rglob("*") if not p.is_symlink()) / 1e6
