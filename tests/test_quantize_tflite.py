"""Quantizing float .tflite models with ai-edge-quantizer, with and without a signature def."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tflite_models as M
from ai_edge_litert import interpreter as tfl

from qbench.host.errors import UserError
from qbench.host.quantize.tflite import prepare_tflite, quantize_tflite


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return M.write_models(tmp_path_factory.mktemp("tflite"))


CALIBRATION = {"input": M.calibration_samples()}


def _tensors(path: Path) -> dict[str, dict]:
    interp = tfl.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    return {d["name"]: d for d in interp.get_tensor_details()}


def _value(path: Path, sample: np.ndarray, name: str) -> np.ndarray:
    """Tensor ``name`` after running ``sample``, dequantized by hand if it is an integer tensor."""
    interp = tfl.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        sample = np.clip(np.rint(sample / scale) + zero, -128, 127).astype(inp["dtype"])
    interp.set_tensor(inp["index"], sample)
    interp.invoke()
    detail = next(d for d in interp.get_tensor_details() if d["name"] == name)
    value = interp.get_tensor(detail["index"])
    scale, zero = detail["quantization"]
    return (value.astype(np.float64) - zero) * scale if scale else value


def test_prepare_adds_serving_default_to_a_model_without_one(models):
    prepared = prepare_tflite(models["float_nosig"].read_bytes())
    assert prepared.signature_key == "serving_default" and prepared.signature_inputs == {"input": "input"}
    assert tfl.Interpreter(model_content=prepared.model).get_signature_list() == {
        "serving_default": {"inputs": ["input"], "outputs": ["probs"]}
    }
    assert prepared.notes == ["signature def 'serving_default' added (the model has none)"]


def test_prepare_keeps_a_model_that_needs_nothing(models):
    original = models["float"].read_bytes()
    prepared = prepare_tflite(original)
    assert prepared.model == original and prepared.notes == []
    assert (prepared.signature_key, prepared.signature_inputs) == ("serving_default", {"input": "input"})


def test_prepare_fixes_old_opcodes_and_folds_fp16_weights():
    original = M.float_convnet(signature=None, legacy_opcodes=True, fp16_weights=True)
    prepared = prepare_tflite(original)
    assert len(prepared.notes) == 3
    interp = tfl.Interpreter(model_content=prepared.model)
    interp.allocate_tensors()
    assert "DEQUANTIZE" not in [op["op_name"] for op in interp._get_ops_details()]
    x = M.calibration_samples(1)[0]
    ref = tfl.Interpreter(model_content=original)
    ref.allocate_tensors()
    for i in (interp, ref):
        i.set_tensor(i.get_input_details()[0]["index"], x)
        i.invoke()
    np.testing.assert_allclose(interp.get_tensor(interp.get_output_details()[0]["index"]),
                               ref.get_tensor(ref.get_output_details()[0]["index"]), rtol=1e-5, atol=1e-7)


def test_old_schema_fp16_model_quantizes_like_a_modern_one(tmp_path):
    legacy = tmp_path / "legacy.tflite"
    legacy.write_bytes(M.float_convnet(signature=None, legacy_opcodes=True, fp16_weights=True))
    result = quantize_tflite(legacy, tmp_path / "int8.tflite", CALIBRATION)
    assert len(result.notes) == 3
    tensors = _tensors(result.path)
    # read as ADD without the opcode fix; weights taken for activations without the fp16 fold
    assert len(tensors["conv1/weights"]["quantization_parameters"]["scales"]) == M.CHANNELS
    assert tensors["conv1/bias"]["dtype"] == np.int32
    assert tensors["conv1"]["dtype"] == np.int8


def test_static_int8_of_a_model_without_signature(models, tmp_path):
    out = quantize_tflite(models["float_nosig"], tmp_path / "int8.tflite", CALIBRATION).path
    tensors = _tensors(out)
    assert tensors["conv1"]["dtype"] == np.int8 and tensors["logits"]["dtype"] == np.int8
    weights = tensors["conv1/weights"]["quantization_parameters"]
    assert len(weights["scales"]) == M.CHANNELS and weights["quantized_dimension"] == 0  # per channel
    scale = tensors["conv1"]["quantization_parameters"]["scales"][0]
    for sample in M.calibration_samples(4, seed=9):
        q, f = _value(out, sample, "conv1"), _value(models["float"], sample, "conv1")
        # ai-edge-quantizer averages per-sample ranges (EMA), so the largest values may clip: 95% fit
        assert np.mean(np.abs(q - f) <= 2 * scale) > 0.95


def test_int16_activations(models, tmp_path):
    out = quantize_tflite(models["float"], tmp_path / "int16.tflite", CALIBRATION, recipe="static_wi8_ai16").path
    tensors = _tensors(out)
    assert tensors["conv1"]["dtype"] == np.int16 and tensors["add"]["dtype"] == np.int16
    assert tensors["conv1/weights"]["dtype"] == np.int8


def test_keep_float_leaves_an_op_in_float_between_boundary_ops(models, tmp_path):
    out = quantize_tflite(models["float_nosig"], tmp_path / "mixed.tflite", CALIBRATION, keep_float=["dw"]).path
    tensors = _tensors(out)
    assert tensors["dw"]["dtype"] == np.float32 and tensors["dw/weights"]["dtype"] == np.float32
    assert tensors["conv1"]["dtype"] == np.int8 and tensors["add"]["dtype"] == np.int8
    interp = tfl.Interpreter(model_path=str(out))
    ops = [op["op_name"] for op in interp._get_ops_details()]
    assert "QUANTIZE" in ops and "DEQUANTIZE" in ops


@pytest.mark.parametrize("kwargs, message", [
    ({"recipe": "dynamic_wi8_afp32"}, "unknown TFLite recipe"),
    ({"calibration": {"x": M.calibration_samples()}}, "do not match the model's ['input']"),
    ({"calibration": {"input": M.calibration_samples()[:, :, :4]}}, "do not fit"),
    ({"calibration": {"input": M.calibration_samples()[:0]}}, "non-zero number of samples"),
    ({"keep_float": ["nope"]}, "keep_float"),
])
def test_user_errors(models, tmp_path, kwargs, message):
    args = {"calibration": CALIBRATION, **kwargs}
    with pytest.raises(UserError) as err:
        quantize_tflite(models["float"], tmp_path / "out.tflite", **args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_a_tflite_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x08\x07" + b"onnx protobuf, not a flatbuffer" * 4)
    with pytest.raises(UserError):
        quantize_tflite(path, tmp_path / "out.tflite", CALIBRATION)
