"""What the `qbench fix` tests share, for either model format."""

from __future__ import annotations

import hashlib
from pathlib import Path


from cli import load_report, qbench

#: timing cut short, and the sample files every calibrate/fix test writes in its workdir
FAST = ["--runs", "3", "--warmup", "1", "--min-seconds", "0", "--quiet"]
DATA = ["--data", "eval.npz", "--calibration", "calib.npz"]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_fix(workdir: Path, model: str, out: Path, *options: str, cache, code: int = 0):
    """``qbench fix MODEL --device local OPTIONS`` on the workdir's samples, exiting with ``code``: the process
    and the report in ``out``."""
    proc = qbench("fix", model, "--device", "local", *options, *DATA, "--out", str(out), *FAST, cwd=workdir,
                  cache=cache)
    assert proc.returncode == code, proc.stderr
    return proc, load_report(out)
