"""A real labgrid lab for the tests: labgrid-coordinator and labgrid-exporter on 127.0.0.1.

The coordinator listens on a free loopback port and keeps its places.yaml and resources.yaml in a
folder of its own; the exporter publishes one NetworkService resource per board (the real sshd and
dropbear servers the SSH tests start); places are made through labgrid's Python API, as
``labgrid-client`` makes them (one process instead of three per place).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_labgrid() -> None:
    if not (BIN / "labgrid-coordinator").exists():
        pytest.skip("labgrid not installed in this venv (pip install 'labgrid>=26'; it is in the dev extra)")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Lab:
    """A running coordinator (restartable) and exporter."""

    def __init__(self, root: Path, boards: dict[str, dict]):
        self.root, self.boards = root, boards
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.coordinator: subprocess.Popen | None = None
        self.exporter: subprocess.Popen | None = None

    def start_coordinator(self) -> None:
        folder = self.root / "coordinator"
        folder.mkdir(exist_ok=True)
        with open(folder / "coordinator.log", "ab") as log:
            self.coordinator = subprocess.Popen([str(BIN / "labgrid-coordinator"), "--listen", self.address],
                                                cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.coordinator.poll() is not None:
                raise RuntimeError(f"labgrid-coordinator exited: {(folder / 'coordinator.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("labgrid-coordinator did not listen in time")

    def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            _stop(self.coordinator)

    def start_exporter(self) -> None:
        config = self.root / "exporter.yaml"
        config.write_text(yaml.safe_dump({name: {"NetworkService": service} for name, service in self.boards.items()}))
        with open(self.root / "exporter.log", "ab") as log:
            self.exporter = subprocess.Popen(
                [str(BIN / "labgrid-exporter"), "-c", self.address, "--name", "exp1", "--hostname", "127.0.0.1",
                 str(config)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wanted = {f"exp1/{name}/NetworkService" for name in self.boards}

        async def published(session) -> bool:
            await session.sync_with_coordinator()
            return wanted <= {f"{e}/{g}/{r.cls}" for e, gs in session.resources.items()
                              for g, rs in gs.items() for r in rs.values()}

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.admin(published):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the exporter's resources did not appear: {(self.root / 'exporter.log').read_text()[-2000:]}")

    def admin(self, work):
        """Run ``await work(session)`` in a labgrid ClientSession of its own (labgrid's Python API)."""
        from labgrid.remote.client import start_session

        result: list = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)  # grpc.aio looks the loop up
            session = start_session(self.address, loop=loop)
            try:
                result.append(loop.run_until_complete(work(session)))
            finally:
                loop.run_until_complete(session.stop())
                loop.run_until_complete(session.close())
                loop.close()

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
        return result[0] if result else None

    def add_places(self, places: dict[str, tuple[str, dict[str, str]]]) -> None:
        """Create places (name -> (board, tags)), each matching its board's NetworkService, as
        ``labgrid-client -p NAME create; add-match exp1/BOARD/NetworkService; set-tags K=V`` do."""
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2

        async def create(session) -> None:
            for name, (board, tags) in places.items():
                await session.stub.AddPlace(pb2.AddPlaceRequest(name=name))
                await session.stub.AddPlaceMatch(pb2.AddPlaceMatchRequest(placename=name,
                                                                          pattern=f"exp1/{board}/NetworkService"))
                await session.stub.SetPlaceTags(pb2.SetPlaceTagsRequest(placename=name, tags=tags))
            await session.sync_with_coordinator()

        self.admin(create)

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "LG_COORDINATOR": self.address}
        done = subprocess.run([str(BIN / "labgrid-client"), *args], capture_output=True, text=True, env=env,
                              timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def stop(self) -> None:
        for proc in (self.exporter, self.coordinator):
            if proc is not None:
                _stop(proc)


@contextlib.contextmanager
def running_lab(root: Path, boards: dict[str, dict]) -> Iterator[Lab]:
    """A coordinator and an exporter of ``boards`` (name -> NetworkService settings); stopped after."""
    require_labgrid()
    lab = Lab(root, boards)
    try:
        lab.start_coordinator()
        lab.start_exporter()
        yield lab
    finally:
        lab.stop()
