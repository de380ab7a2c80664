"""Framing, typed contents and the spec, without sockets (see test_agent.py for real ones)."""

import re
from pathlib import Path

import numpy as np
import pytest

from qbench.protocols import codec
from qbench.protocols.messages import (
    CaptureRequest,
    ErrorCode,
    from_dict,
    Message,
    OrtRunnerConfig,
    ProtocolError,
    to_dict,
)
from qbench.protocols.version import PROTOCOL_VERSION, compatible

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", sorted(codec.WIRE_DTYPES))
def test_round_trip_every_dtype(dtype):
    rng = np.random.default_rng(1)
    arr = (rng.normal(size=(2, 3, 5)) * 100).astype(dtype)
    frames = codec.encode(Message(type="x_request", id="1", tensors=[arr, arr[:, 0]], names=["a", "b"]))
    msg = codec.decode([bytes(f) for f in frames], max_frame_bytes=1 << 20)
    assert msg.names == ["a", "b"]
    np.testing.assert_array_equal(msg.tensors[0], arr)
    np.testing.assert_array_equal(msg.tensors[1], arr[:, 0])  # a non-contiguous view travels too
    assert msg.tensors[0].dtype == np.dtype(dtype)


def test_big_endian_and_empty_tensors_round_trip():
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    frames = codec.encode(Message(type="x_request", id="1", tensors=[arr, np.zeros((0, 4), np.float32)]))
    msg = codec.decode(frames, max_frame_bytes=1 << 20)
    np.testing.assert_array_equal(msg.tensors[0], arr)
    assert msg.tensors[1].shape == (0, 4)


def test_received_tensor_is_a_view_of_the_frame():
    arr = np.arange(1000, dtype=np.float32)
    frames = [bytearray(bytes(f)) for f in codec.encode(Message(type="x_request", id="1", tensors=[arr]))]
    msg = codec.decode(frames, max_frame_bytes=1 << 20)
    frames[1][0:4] = np.float32(42).tobytes()
    assert msg.tensors[0][0] == 42  # no copy was made on receive


def test_oversized_frame_is_rejected_with_too_large():
    frames = codec.encode(Message(type="x_request", id="1", tensors=[np.zeros(1000, np.float64)]))
    with pytest.raises(ProtocolError) as err:
        codec.decode(frames, max_frame_bytes=100)
    assert err.value.info.code == ErrorCode.TOO_LARGE.value


@pytest.mark.parametrize(
    "frames, fragment",
    [
        ([b"not json"], "not JSON"),
        ([b"[1, 2]"], "object with a type"),
        ([b'{"type": "x_request", "buffers": [{"dtype": "float32", "shape": [4]}]}'], "1 buffers declared, 0"),
        ([b'{"type": "x_request", "buffers": [{"dtype": "float32", "shape": [4]}]}', b"123"], "3 bytes"),
        ([b'{"type": "x_request", "buffers": [{"dtype": "object", "shape": [1]}]}', b"12345678"], "not allowed"),
        ([b'{"type": "x_request", "buffers": [{"dtype": "int8", "shape": [-1]}]}', b""], "bad shape"),
        ([], "empty"),
    ],
)
def test_malformed_messages_are_rejected(frames, fragment):
    with pytest.raises(ProtocolError) as err:
        codec.decode(frames, max_frame_bytes=1 << 20)
    assert err.value.info.code == ErrorCode.BAD_MESSAGE.value
    assert fragment in err.value.info.message


def test_from_dict_ignores_unknown_fields_and_fills_defaults():
    req = from_dict(CaptureRequest, {
        "float_model": {"sha256": "a" * 64, "format": "onnx", "future_field": 1},
        "int8_model": {"sha256": "b" * 64, "format": "onnx"},
        "pairs": [{"float_name": "x", "int8_name": "x_q", "qparams": {"scale": [0.5], "zero_point": [3]}}],
        "something_new": True,
    })
    assert req.pairs[0].qparams.scale == [0.5]
    assert req.runner == OrtRunnerConfig()
    assert from_dict(CaptureRequest, to_dict(req)) == req


@pytest.mark.parametrize("bad", [{"float_model": {"sha256": "a"}}, {"float_model": 3}, "text"])
def test_from_dict_rejects_missing_or_mistyped_fields(bad):
    with pytest.raises(ProtocolError) as err:
        from_dict(CaptureRequest, bad)
    assert err.value.info.code == ErrorCode.BAD_MESSAGE.value


def test_version_compatibility_is_by_major():
    major = PROTOCOL_VERSION.split(".")[0]
    assert compatible(f"{major}.99")
    assert not compatible(f"{int(major) + 1}.0")


def test_spec_is_pinned_to_the_protocol_version():
    spec = (ROOT / "protocols" / "README.md").read_text()
    assert re.search(r"Protocol version: \*\*([0-9.]+)\*\*", spec).group(1) == PROTOCOL_VERSION


def test_spec_documents_every_message_and_error_code():
    from qbench.protocols.messages import MsgType

    spec = (ROOT / "protocols" / "README.md").read_text()
    for kind in MsgType:
        assert f"`{kind.value}_request` / `{kind.value}_reply`" in spec
    for code in ErrorCode:
        assert f"`{code.value}`" in spec


def test_runner_config_is_the_runtimes_own_and_refuses_another_runtimes_fields():
    from qbench.protocols.messages import BenchmarkRequest, LiteRTRunnerConfig, OrtRunnerConfig, from_dict, to_dict

    ref = {"sha256": "0" * 64, "format": "tflite"}
    litert = from_dict(BenchmarkRequest, {"model": ref, "runner": {"runtime": "tflite", "delegate": "none"}})
    assert litert.runner == LiteRTRunnerConfig(delegate="none")
    ort = from_dict(BenchmarkRequest, to_dict(BenchmarkRequest(model=litert.model, runner=OrtRunnerConfig(threads=2))))
    assert ort.runner == OrtRunnerConfig(threads=2)
    for runner, foreign in (({"runtime": "onnxruntime", "delegate": "xnnpack"}, "delegate"),
                            ({"runtime": "tflite", "providers": ["CPUExecutionProvider"]}, "providers"),
                            ({"runtime": "tflite", "graph_optimization": "all"}, "graph_optimization")):
        with pytest.raises(ProtocolError, match=f"{foreign} do not apply to runtime {runner['runtime']}") as err:
            from_dict(BenchmarkRequest, {"model": ref, "runner": runner})
        assert err.value.info.code == ErrorCode.BAD_MESSAGE.value
    with pytest.raises(ProtocolError, match="runner.runtime must be one of"):
        from_dict(BenchmarkRequest, {"model": ref, "runner": {"runtime": "tensorrt"}})
