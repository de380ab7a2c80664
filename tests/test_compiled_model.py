"""Timing on LiteRT's CompiledModel (``--accelerator``): real CLI, real agent, real LiteRT.

Checked against independent computations: a plain CompiledModel written here for outputs and
coverage, plain LiteRT interpreters for the PSNR of the capture (which runs on the Interpreter).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tflite_models as M
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator

from cli import load_report, qbench
from qbench.agent.runners.litert_compiled import CompiledModelRunner
from qbench.agent.runners.litert_probe import available_accelerators
from qbench.host.transport.client import AgentClient, AgentError
from qbench.host.transport.local import LocalTransport
from qbench.protocols.messages import BenchmarkRequest, LiteRTRunnerConfig, ProtocolError, TimingConfig
from test_run_tflite import FAST, _as_input, _eval, _interpreter, _one_error_line, _output_psnr
from test_run_tflite import work  # noqa: F401  (the fixture: models and samples, made once for this module)


@pytest.fixture(scope="module")
def accelerated(work, agent_cache):
    """A float .tflite without signature def, quantized by qbench, timed on the CPU accelerator."""
    tmp, paths = work
    proc = qbench("run", str(paths["float_nosig"]), "--accelerator", "cpu", "--data", "eval.npz",
                  "--calibration", "calib.npz", "--out", "cpu", "--runs", "3", "--warmup", "1", "--min-seconds", "0",
                  cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    return load_report(tmp / "cpu"), " ".join(proc.stdout.split())


def _plain(path, samples: np.ndarray) -> tuple[np.ndarray, bool]:
    """Every sample through a CompiledModel on the CPU accelerator, outputs stacked; and its coverage.

    Float samples for an integer input are quantized with the input's parameters, read from an Interpreter.
    """
    (inp,) = _interpreter(path).get_input_details()
    model = CompiledModel.from_file(str(path), hardware_accel=HardwareAccelerator.CPU)
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    (detail,) = model.get_output_tensor_details(next(iter(model.get_signature_list()))).values()
    got = []
    for sample in samples:
        inputs[0].write(_as_input(sample, inp))
        model.run_by_index(0, inputs, outputs)
        got.append(outputs[0].read(int(np.prod(detail["shape"])), np.dtype(detail["dtype"])).reshape(detail["shape"]))
    return np.stack(got), model.is_fully_accelerated()


def test_timed_on_the_accelerator_and_recorded(work, accelerated):
    report, _ = accelerated
    assert report["status"] == "ok"
    device = report["device"]
    assert device["accelerator"] == "cpu" and device["providers"] == ["CompiledModel:cpu"]
    assert "cpu" in device["available_accelerators"] and "delegate" not in device
    for kind in ("float", "int8"):
        assert report["latency"][kind]["runs"] >= 3 and report["latency"][kind]["median_ms"] > 0
        _, fully = _plain(report["models"][kind]["path"], _eval(work[0])[:1])
        assert device["coverage"][kind] == {"accelerator": "cpu", "fully_accelerated": fully,
                                            "cpu_fallback": False, "fallback_reason": None}
    assert device["providers_used"] == ["cpu"]


def test_capture_runs_on_the_interpreter_and_says_so(work, accelerated):
    report, stdout = accelerated
    assert report["capture"]["api"] == "Interpreter" and report["capture"]["timed_accelerator"] == "cpu"
    assert report["capture"]["delegate"] == "xnnpack" and report["capture"]["without_timing_delegate"] is True
    assert "per-layer capture ran on the LiteRT Interpreter with delegate xnnpack" in stdout
    assert "int8: accelerator cpu" in stdout
    assert [x["name"] for x in report["layers"]] == M.ACTIVATIONS and report["summary"]["layers_compared"] == 8
    assert report["summary"]["output_psnr_db"] == pytest.approx(_output_psnr(report, _eval(work[0])), abs=1e-3)


def test_agent_returns_the_compiled_models_outputs(work, accelerated, tmp_path):
    """Through a real agent: the timed outputs of a model without signature def, one with, and the
    quantizer's, whose int8 input is fed floats (quantized by the runner) and whose output stays int8."""
    _, paths = work
    models = {"float_nosig": paths["float_nosig"], "int8": paths["int8"],
              "quantizer": accelerated[0]["models"]["int8"]["path"]}
    samples = M.calibration_samples(3, seed=9)
    transport = LocalTransport(cache_dir=str(tmp_path / "cache"))
    client = AgentClient(transport.start(), timeout_s=60)
    runner = LiteRTRunnerConfig(accelerator="cpu")
    try:
        hello = client.hello()
        replies = {}
        for role, path in models.items():
            ref = client.ensure_model(path, "tflite")
            req = BenchmarkRequest(model=ref, runner=runner, return_outputs=True,
                                   timing=TimingConfig(warmup=0, runs=2, min_seconds=0.0))
            replies[role] = client.benchmark_outputs(req, {"input": samples})
        with pytest.raises(AgentError, match="'gpu' is not available on the agent; available: cpu"):
            client.benchmark(BenchmarkRequest(model=ref, runner=LiteRTRunnerConfig(accelerator="gpu")),
                             {"input": samples})
    finally:
        client.close()
        transport.stop()
    assert "cpu" in hello.runtimes["litert-compiled"].providers
    for role, (reply, outputs) in replies.items():
        expected, fully = _plain(models[role], samples)
        assert list(outputs) == ["probs"] and reply.outputs_omitted is None
        assert outputs["probs"].dtype == expected.dtype == (np.int8 if role == "quantizer" else np.float32)
        np.testing.assert_allclose(outputs["probs"], expected, rtol=1e-6, atol=1e-7)
        assert reply.coverage["fully_accelerated"] is fully and reply.latency.runs >= 2


@pytest.mark.parametrize("accelerator", ["gpu", "npu"])
def test_probe_lists_only_accelerators_that_compile(accelerator):
    """What the probe leaves out must really be absent: LiteRT refuses to compile for it alone."""
    found = available_accelerators()
    assert "cpu" in found
    model = M.float_convnet()
    if accelerator in found:
        CompiledModel.from_buffer(model, hardware_accel=HardwareAccelerator[accelerator.upper()])
    else:
        with pytest.raises(RuntimeError):
            CompiledModel.from_buffer(model, hardware_accel=HardwareAccelerator[accelerator.upper()])


def test_absent_accelerator_is_one_clear_error_before_measuring(work, agent_cache):
    tmp, paths = work
    found = available_accelerators()
    if "gpu" in found:
        pytest.skip("this machine has a LiteRT GPU accelerator")
    (tmp / "devices.yaml").write_text("devices:\n  board:\n    transport: local\n    accelerator: gpu\n")
    proc = qbench("run", str(paths["float"]), "--int8", str(paths["int8"]), "--device", "board",
                  "--devices", "devices.yaml", "--data", "eval.npz", "--out", "gpu", *FAST, cwd=tmp, cache=agent_cache)
    line = _one_error_line(proc)
    assert f"LiteRT accelerator 'gpu' is not available on the device; available: {', '.join(found)}" in line
    report = load_report(tmp / "gpu")
    assert report["error"]["stage"] == "check delegate" and "latency" not in report



@pytest.mark.slow
def test_compare_times_every_target_on_the_accelerator(work, agent_cache):
    tmp, paths = work
    proc = qbench("compare", str(paths["float"]), "--int8", str(paths["int8"]), "--accelerator", "cpu",
                  "--data", "eval.npz", "--out", "compare", *FAST, cwd=tmp, cache=agent_cache)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp / "compare" / "compare.json").read_text())
    (target,) = doc["targets"]
    _, fully = _plain(paths["int8"], _eval(tmp)[:1])
    assert target["report"]["device"]["accelerator"] == "cpu"
    assert doc["table"][0]["ran"] == f"cpu accelerator ({'all ops' if fully else 'not all ops'})"


def test_a_type_tensorbuffer_cannot_carry_is_one_clear_error(tmp_path):
    g = M.Graph()
    x = g.tensor("x", (1, 4), np.int16, quant=M.qparams(0.01, 0))
    y = g.tensor("y", (1, 4), np.int16, quant=M.qparams(0.02, 0))
    g.op(fb.BuiltinOperator.ADD, [x, x], [y], fb.AddOptionsT())
    path = tmp_path / "int16.tflite"
    path.write_bytes(g.to_bytes([x], [y], signature=None))
    runner = CompiledModelRunner(str(path), LiteRTRunnerConfig(accelerator="cpu"))
    with pytest.raises(ProtocolError, match="tensor 'x' is INT16, which LiteRT's TensorBuffer cannot carry") as err:
        runner.load()
    assert err.value.info.code == "model_invalid"


def test_an_accelerator_refusing_the_model_falls_back_to_the_cpu_and_says_so(work):
    """Straight to the runner (the agent refuses an absent NPU first): LiteRT compiles NPU | CPU anyway."""
    _, paths = work
    if "npu" in available_accelerators():
        pytest.skip("this machine has a LiteRT NPU accelerator")
    runner = CompiledModelRunner(str(paths["float"]), LiteRTRunnerConfig(accelerator="npu"))
    runner.load()
    coverage = runner.delegation()
    assert coverage["cpu_fallback"] is True and coverage["fully_accelerated"] is False
    assert coverage["fallback_reason"] and runner.providers_used() == ["npu", "cpu"]
    sample = M.calibration_samples(1, seed=4)
    np.testing.assert_allclose(runner.infer({"input": sample[0]})["probs"], _plain(paths["float"], sample)[0][0],
                               rtol=1e-6, atol=1e-7)
