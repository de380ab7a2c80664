"""Secret-bearing option values never reach report.json or the results database."""

from __future__ import annotations

import pytest

from cli import qbench
from qbench.host.store.redact import MASK, redact_argv, redact_settings


@pytest.mark.parametrize("argv, expected", [
    (["--delegate-option", "token=abc"], ["--delegate-option", f"token={MASK}"]),
    (["--delegate-option=api_key=abc"], [f"--delegate-option=api_key={MASK}"]),
    (["--delegate-option", "Password=abc", "--delegate-option", "claim=relu"],
     ["--delegate-option", f"Password={MASK}", "--delegate-option", "claim=relu"]),
    (["--api-token", "abc", "--runs", "3"], ["--api-token", MASK, "--runs", "3"]),
    (["--client-secret=abc"], [f"--client-secret={MASK}"]),
    (["run", "model.onnx", "--samples", "4"], ["run", "model.onnx", "--samples", "4"]),
])
def test_secret_values_on_a_command_line_are_masked(argv, expected):
    assert redact_argv(argv) == expected


def test_runner_options_with_secret_names_are_masked():
    settings = {"argv": ["--delegate-option", "secret=s"], "runner": {
        "delegate_options": {"secret": "s", "claim": "relu"}, "provider_options": [{"auth_token": "t", "device_id": 0}]}}
    out = redact_settings(settings)
    assert out["runner"]["delegate_options"] == {"secret": MASK, "claim": "relu"}
    assert out["runner"]["provider_options"] == [{"auth_token": MASK, "device_id": 0}]
    assert out["argv"] == ["--delegate-option", f"secret={MASK}"]
    assert settings["runner"]["delegate_options"]["secret"] == "s"  # the caller's copy is untouched


def test_a_run_stores_no_delegate_token(tmp_path):
    import tflite_models as tm

    model = tmp_path / "net.tflite"  # delegate options are LiteRT's: an ONNX model refuses them
    model.write_bytes(tm.float_convnet())
    db = tmp_path / "results.sqlite"
    secret = "S3CRET-VALUE-42"
    proc = qbench("run", str(model), "--out", "out", "--db", str(db), "--accuracy-only", "--samples", "2",
                  "--quiet", "--delegate-option", f"token={secret}", "--delegate-option=password=" + secret,
                  cwd=tmp_path, cache=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "out" / "report.json").read_text()
    assert secret not in report and f"token={MASK}" in report
    stored = list(tmp_path.glob("results.sqlite*"))  # the database and any journal beside it
    assert db in stored and not any(secret.encode() in f.read_bytes() for f in stored)
