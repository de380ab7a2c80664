"""Workers forked from per-runtime zygotes (agent/zygote.py): reuse, crashes, respawn, no orphans, memory.

Every test runs a real agent process and reads the process tree from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tflite_models
from models import build_convnet
from qbench.host.transport.base import RunKeys
from qbench.host.transport.client import AgentClient, AgentError
from qbench.protocols.messages import BenchmarkRequest, LiteRTRunnerConfig, TimingConfig

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")

ZYGOTE = "qbench.agent.zygote"
X = {"x": np.zeros((1, 1, 3, 16, 16), np.float32)}
QUICK = TimingConfig(warmup=0, runs=2, min_seconds=0)
# far longer than any test waits: the test ends such a job by killing something
ENDLESS = TimingConfig(warmup=0, runs=10**8, max_runs=10**8, min_seconds=60, max_seconds=60)


class Agent:
    """A real agent process (``python -m qbench.agent``) and a client connected to it."""

    def __init__(self, tmp: Path, *args: str, client_timeout_s: float = 60):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qbench.agent", "--cache-dir", str(tmp / "cache"), "--exit-on-stdin-eof",
             "--keys-stdin", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        keys = RunKeys.fresh()
        self.proc.stdin.write(keys.stdin_line().decode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("QBENCH_AGENT_READY "), line
        self.client = AgentClient(line.split()[1], timeout_s=client_timeout_s, keys=keys)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)

    def zygotes(self) -> dict[str, int]:
        """Runtime ("" for the probe's) -> pid of each live zygote the agent started."""
        found = {}
        for pid, (ppid, state, args) in _processes().items():
            if ppid == self.proc.pid and state != "Z" and ZYGOTE in args:
                found[args[args.index(ZYGOTE) + 2]] = pid
        return found

    def warm(self) -> dict[str, int]:
        """After hello: the installed runtimes' zygotes, once started (the probe's is gone by then)."""
        self.client.hello()
        _wait_for(lambda: set(self.zygotes()) == {"onnxruntime", "tflite"}, "warm zygotes")
        return self.zygotes()


def _processes() -> dict[int, tuple[int, str, list[str]]]:
    """pid -> (ppid, state, argv) of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), fields[0], [a.decode(errors="replace") for a in args])
    return found


def _children(pid: int) -> list[int]:
    return [p for p, (ppid, state, _) in _processes().items() if ppid == pid and state != "Z"]


def _alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_for(condition, what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


class Job(threading.Thread):
    """A benchmark running in the background; ``error`` is the AgentError it ended with."""

    def __init__(self, agent: Agent, ref, timing: TimingConfig, timeout_s: float = 600.0):
        super().__init__(daemon=True)
        self.agent, self.request = agent, BenchmarkRequest(model=ref, timing=timing, timeout_s=timeout_s)
        self.error: AgentError | None = None

    def run(self) -> None:
        try:
            self.agent.client.benchmark(self.request, X)
        except AgentError as exc:
            self.error = exc


def _start_endless(agent: Agent, ref, zygote: int) -> tuple[Job, int]:
    """An endless benchmark and the pid of its worker, a child of ``zygote``."""
    job = Job(agent, ref, ENDLESS)
    job.start()
    worker = _wait_for(lambda: _children(zygote), "the worker")[0]
    return job, worker


@pytest.fixture
def agent(tmp_path):
    started = Agent(tmp_path)
    yield started
    started.stop()


def test_jobs_fork_from_one_zygote_per_runtime_which_is_reused(agent, tmp_path):
    zygotes = agent.warm()
    ref = agent.client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
    for _ in range(2):  # the first also runs the baseline job
        reply = agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X)
        assert reply.latency.runs >= 2 and reply.memory.baseline_mb > 0
    assert agent.zygotes() == zygotes
    job, worker = _start_endless(agent, ref, zygotes["onnxruntime"])
    assert _processes()[worker][0] == zygotes["onnxruntime"]  # forked by the zygote, not spawned by the agent
    os.kill(worker, signal.SIGKILL)
    job.join(30)


def test_hello_warms_only_the_runtimes_the_host_names(tmp_path):
    agent = Agent(tmp_path)
    try:
        agent.client.hello(["onnxruntime", "../../escape", "litert-compiled"])
        _wait_for(lambda: "onnxruntime" in agent.zygotes(), "the onnxruntime zygote")
        time.sleep(0.5)  # a wrongly warmed tflite zygote would have been started with the onnxruntime one
        assert set(agent.zygotes()) == {"onnxruntime"}  # unknown names and CompiledModel start nothing
        assert sorted(p.name for p in (tmp_path / "cache" / "zygotes").iterdir()) == ["zygote-onnxruntime.log"]
    finally:
        agent.stop()


def test_warm_starts_a_zygote_with_the_agent_and_hello_probes_only_what_the_host_names(tmp_path):
    agent = Agent(tmp_path, "--warm", "onnxruntime,../../escape")
    try:
        assert set(agent.zygotes()) == {"onnxruntime"}  # started before the ready line, before any request
        assert set(agent.client.hello(["onnxruntime"]).runtimes) == {"onnxruntime"}  # LiteRT not even imported
        # a job on a runtime the hello did not probe gets it probed first
        ref = agent.client.ensure_model(_write(tmp_path / "m.tflite", tflite_models.float_convnet()), "tflite")
        request = BenchmarkRequest(model=ref, runner=LiteRTRunnerConfig(), timing=QUICK)
        sample = {"input": np.zeros((1, *tflite_models.INPUT_SHAPE), np.float32)}
        assert agent.client.benchmark(request, sample).latency.runs >= 2
        # without names: every runtime installed here, CompiledModel's accelerator trial included
        assert set(agent.client.hello().runtimes) == {"onnxruntime", "tflite", "litert-compiled"}
    finally:
        agent.stop()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_worker_killed_by_a_signal_is_a_crash_naming_it_not_out_of_memory(agent, tmp_path):
    zygote = agent.warm()["onnxruntime"]
    ref = agent.client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
    agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X)  # the baseline worker is done
    # a SIGKILL is out of memory only when the kernel's OOM killer sent it (/proc/vmstat oom_kill): here we did
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
        job, worker = _start_endless(agent, ref, zygote)
        os.kill(worker, sig)
        job.join(30)
        assert job.error is not None and job.error.info.code == "worker_crashed", job.error
        assert f"killed by signal {signal.Signals(sig).name}" in job.error.info.message
    assert agent.zygotes()["onnxruntime"] == zygote
    assert agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X).latency.runs >= 2


def test_a_job_over_its_timeout_kills_the_worker_and_the_zygote_serves_on(agent, tmp_path):
    zygote = agent.warm()["onnxruntime"]
    ref = agent.client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
    agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X)
    job = Job(agent, ref, ENDLESS, timeout_s=1.5)
    job.start()
    worker = _wait_for(lambda: _children(zygote), "the worker")[0]
    job.join(30)
    assert job.error is not None and job.error.info.code == "worker_timeout", job.error
    assert not _alive(worker)  # killed and reaped before the reply
    assert agent.zygotes()["onnxruntime"] == zygote
    assert agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X).latency.runs >= 2


def test_a_killed_zygote_is_started_again(agent, tmp_path):
    zygote = agent.warm()["onnxruntime"]
    ref = agent.client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
    os.kill(zygote, signal.SIGKILL)
    _wait_for(lambda: not _alive(zygote), "the zygote to die")
    assert agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X).latency.runs >= 2
    assert agent.zygotes()["onnxruntime"] not in (None, zygote)


def test_a_zygote_that_cannot_start_is_a_typed_error(tmp_path):
    agent = Agent(tmp_path, "--worker-cmd", "false")
    try:
        with pytest.raises(AgentError) as err:
            agent.client.hello()  # the probe job needs a worker
        assert err.value.info.code == "worker_crashed" and "zygote" in err.value.info.message
        assert agent.proc.poll() is None  # and the agent stays up
    finally:
        agent.stop()


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_no_zygote_or_worker_outlives_the_agent(tmp_path, how):
    # killed, the agent cannot clean up: its zygotes see EOF on their socket, kill their worker and exit
    agent = Agent(tmp_path, client_timeout_s=3)
    try:
        zygotes = agent.warm()
        ref = agent.client.ensure_model(build_convnet(tmp_path / "m.onnx"), "onnx")
        agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), X)
        job, worker = _start_endless(agent, ref, zygotes["onnxruntime"])
        if how == "stop":
            agent.proc.stdin.close()
            assert agent.proc.wait(timeout=20) == 0
        else:
            agent.proc.kill()
            agent.proc.wait(timeout=20)
        job.join(30)
        for pid in [worker, *zygotes.values()]:
            _wait_for(lambda: not _alive(pid), f"process {pid} to exit")
    finally:
        agent.stop()


def _expand_model(path: Path, mib: int) -> Path:
    """One Expand node: a float32 output of ``mib`` MiB from a 1-element input."""
    n = mib * 1024 * 1024 // 4
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "expand",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])],
                              [helper.make_tensor("shape", TensorProto.INT64, [1], [n])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


_PLAIN_DELTA = """
import sys, numpy as np, onnxruntime as ort
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024.0
before = hwm()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for _ in range(3):
    session.run(None, {"x": np.ones(1, np.float32)})
print(hwm() - before)
"""


def test_forked_workers_measure_memory_as_spawned_ones_did(agent, tmp_path):
    zygote = agent.warm()["onnxruntime"]
    ref = agent.client.ensure_model(_expand_model(tmp_path / "big.onnx", 200), "onnx")
    feed = {"x": np.ones((1, 1), np.float32)}
    memory = agent.client.benchmark(BenchmarkRequest(model=ref, timing=QUICK), feed).memory
    # the baseline worker starts at the zygote's resident size (file pages included: agent/resident.py)...
    assert abs(memory.baseline_mb - _rss_mb(zygote)) < 3.0, (memory, _rss_mb(zygote))
    # ...so what the model adds is what it adds in a fresh process with plain onnxruntime
    plain = float(subprocess.run([sys.executable, "-c", _PLAIN_DELTA, str(tmp_path / "big.onnx")],
                                 capture_output=True, text=True, check=True).stdout)
    assert plain > 195
    assert abs(memory.delta_mb - plain) < 15, (memory, plain)


_FORK_RSS = """
import os, sys, numpy, onnxruntime
from qbench.agent import resident
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024.0
runs = resident.file_pages()
print(status("VmRSS"))
for advice in (resident.MADV_POPULATE_READ, -1):  # -1: EINVAL, as a kernel before 5.14 answers
    pid = os.fork()
    if pid == 0:
        at_fork = status("VmRSS")
        resident.MADV_POPULATE_READ = advice
        resident.map_pages(runs)
        print(at_fork, status("VmHWM"), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_a_forked_child_maps_its_parents_file_pages():
    out = subprocess.run([sys.executable, "-c", _FORK_RSS], capture_output=True, text=True, check=True).stdout
    parent, *children = [[float(v) for v in line.split()] for line in out.splitlines()]
    assert len(children) == 2
    for at_fork, mapped in children:
        assert at_fork < parent[0] - 5  # fork() leaves the runtime's code pages out of the child's page table
        assert abs(mapped - parent[0]) < 3, (parent, children)
