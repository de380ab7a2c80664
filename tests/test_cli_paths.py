"""`qbench run` checks its output folders before anything runs: one line naming the path and the problem."""

from __future__ import annotations

import pytest

from cli import qbench
from models import build_convnet


@pytest.mark.parametrize("option, where, problem", [
    ("--out", "afile", "is an existing file, not a folder"),
    ("--out", "afile/sub/dir", "afile is a file, not a folder"),
    ("--out", "/proc/qbench-out", "cannot write there"),
    ("--out", "/proc", "cannot write there"),
    ("--save-tensors", "afile", "is an existing file, not a folder"),
    ("--save-tensors", "afile/t", "afile is a file, not a folder"),
])
def test_a_bad_output_folder_is_one_line_before_anything_runs(tmp_path, option, where, problem):
    model = build_convnet(tmp_path / "net.onnx")
    (tmp_path / "afile").write_text("not a folder")
    extra = [] if option == "--out" else ["--out", str(tmp_path / "out")]
    path = where if where.startswith("/") else str(tmp_path / where)
    proc = qbench("run", str(model), option, path, *extra, "--db", str(tmp_path / "db.sqlite"), cwd=tmp_path,
                  cache=tmp_path, timeout=120)
    assert proc.returncode == 1
    expected = problem.replace("afile", str(tmp_path / "afile"), 1) if problem.startswith("afile") else problem
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qbench: error: {option} {path}: {expected}"), proc.stderr
    assert not (tmp_path / ".qbench").exists()  # no agent was started: nothing ran


@pytest.mark.parametrize("command", [["compare"], ["calibrate"], ["fix", "--target-psnr", "30"], ["sensitivity"]])
def test_every_command_checks_its_output_folder_first(tmp_path, command):
    model = build_convnet(tmp_path / "net.onnx")
    (tmp_path / "afile").write_text("not a folder")
    proc = qbench(*command, str(model), "--out", str(tmp_path / "afile"), "--db", str(tmp_path / "db.sqlite"),
                  cwd=tmp_path, cache=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == [f"qbench: error: --out {tmp_path / 'afile'}: is an existing file, not a folder"], proc.stderr
    assert not (tmp_path / ".qbench").exists()
