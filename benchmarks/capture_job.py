"""Time and measure one capture worker on a model pair, without the host or the agent around it.

Builds the capture job exactly as the agent would (pairs from the host's matcher, inputs
from the .npz) and runs ``python -m qbench.agent.worker JOBDIR`` in a fresh process, so
the capture's own wall time and peak memory (VmHWM, reported as ``capture.peak_mb``) are
seen without start-up, upload and timing runs::

    .venv/bin/python -m benchmarks.capture_job benchmarks/.cache/detection640/float.onnx \\
        benchmarks/.cache/detection640/int8.onnx benchmarks/.cache/detection640/data2.npz --budget-mb 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from qbench.host.compare import matching
from qbench.protocols.messages import CaptureRequest, ModelRef, OrtRunnerConfig, to_dict


def write_job(jobdir: Path, float_path: Path, int8_path: Path, data: Path, budget_mb: float, threads: int,
              histogram_bins: int = 0) -> int:
    """The agent's job folder for a capture of ``float_path`` against ``int8_path``; returns the pair count."""
    pairs = matching.match(onnx.load(str(float_path)), onnx.load(str(int8_path))).pairs()
    req = CaptureRequest(float_model=ModelRef("-", "onnx"), int8_model=ModelRef("-", "onnx"), pairs=pairs,
                         runner=OrtRunnerConfig(threads=threads), budget_bytes=int(budget_mb * 2**20),
                         histogram_bins=histogram_bins)
    with np.load(data, allow_pickle=False) as npz:
        names = list(npz.files)
        for k, name in enumerate(names):
            np.save(jobdir / f"in_{k}.npy", npz[name], allow_pickle=False)
    job = {"kind": "capture", "request": to_dict(req), "float_model_path": str(float_path),
           "int8_model_path": str(int8_path), "inputs": names}
    (jobdir / "job.json").write_text(json.dumps(job))
    return len(pairs)


def run_worker(jobdir: Path, env: dict[str, str] | None = None) -> tuple[float, float, float, dict]:
    """Wall seconds, CPU seconds (user + system, all threads) and peak RSS (MiB, from wait4) of the
    worker process, and its result.json."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "qbench.agent.worker", str(jobdir)], stdout=subprocess.DEVNULL,
                            env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"worker exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, json.loads((jobdir / "result.json").read_text())


def _worker_env(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_model", type=Path)
    parser.add_argument("int8_model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--budget-mb", type=float, default=256.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--histogram-bins", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker-path", help="prepended to the worker's PYTHONPATH: run another checkout's "
                                              "worker on the same job (before/after comparisons)")
    args = parser.parse_args(argv)
    jobdir = Path(tempfile.mkdtemp(prefix="qbench-capture-job-"))
    try:
        pairs = write_job(jobdir, args.float_model.resolve(), args.int8_model.resolve(), args.data,
                          args.budget_mb, args.threads, args.histogram_bins)
        walls, cpus, rss, reply = [], [], [], {}
        for _ in range(args.repeats):
            wall, cpu, maxrss, result = run_worker(jobdir, _worker_env(args.worker_path))
            if "error" in result:
                raise SystemExit(f"capture failed: {result['error']['message']}")
            walls.append(wall)
            cpus.append(cpu)
            rss.append(maxrss)
            reply = result["ok"]
    finally:
        shutil.rmtree(jobdir, ignore_errors=True)
    print(json.dumps({"pairs": pairs, "walls_s": walls, "wall_s": min(walls), "cpu_s": cpus, "maxrss_mb": max(rss), "groups": len(reply["groups"]),
                      "peak_mb": reply.get("peak_mb"), "fidelity_max_abs_diff": reply.get("fidelity_max_abs_diff"),
                      "phases_s": reply.get("phases_s")}))


if __name__ == "__main__":
    main()
