"""load_samples and random_samples: .npz files checked against the model's inputs."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.host.data import load_samples, random_samples
from qbench.host.errors import UserError
from qbench.host.models import InputSpec

INPUTS = [InputSpec("x", "float32", (1, 16)), InputSpec("mask", "int64", (1, 16))]


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _good(n=3):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((n, 1, 16)).astype(np.float32), "mask": np.ones((n, 1, 16), np.int64)}


def test_loads_one_array_per_input(tmp_path):
    arrays = _good()
    samples = load_samples(_npz(tmp_path, **arrays), INPUTS)
    assert list(samples) == ["x", "mask"]
    np.testing.assert_array_equal(samples["x"], arrays["x"])
    assert samples["mask"].dtype == np.int64 and samples["mask"].shape == (3, 1, 16)


def test_safe_casts_to_the_input_dtype(tmp_path):
    arrays = {"x": np.zeros((2, 1, 16), np.float64), "mask": np.ones((2, 1, 16), np.float32)}
    samples = load_samples(_npz(tmp_path, **arrays), INPUTS)
    assert samples["x"].dtype == np.float32
    assert samples["mask"].dtype == np.int64 and (samples["mask"] == 1).all()


def test_bool_input_from_zeros_and_ones(tmp_path):
    spec = [InputSpec("keep", "bool", (4,))]
    samples = load_samples(_npz(tmp_path, keep=np.array([[0, 1, 1, 0]], np.int32)), spec)
    assert samples["keep"].dtype == np.bool_
    assert samples["keep"].tolist() == [[False, True, True, False]]


def test_scalar_input_has_only_the_sample_axis(tmp_path):
    spec = [InputSpec("sr", "int64", ())]
    samples = load_samples(_npz(tmp_path, sr=np.array([16000, 16000])), spec)
    assert samples["sr"].shape == (2,)
    with pytest.raises(UserError, match=r"expected \(N,\)"):
        load_samples(_npz(tmp_path, sr=np.array([[16000]])), spec)


def test_dynamic_dim_accepts_any_size(tmp_path):
    spec = [InputSpec("tokens", "int64", (1, None))]
    assert load_samples(_npz(tmp_path, tokens=np.ones((2, 1, 7), np.int64)), spec)["tokens"].shape == (2, 1, 7)


def test_nan_and_inf_are_refused_naming_the_input_and_the_sample(tmp_path):
    arrays = _good(4)
    arrays["x"][2, 0, 3] = np.nan
    arrays["x"][3, 0, 0] = -np.inf
    with pytest.raises(UserError, match=r"input 'x' holds NaN in sample 2 \(and 1 more of the 4 samples\)"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)
    arrays["x"][2, 0, 3] = 0.0
    with pytest.raises(UserError, match=r"input 'x' holds inf in sample 3: qbench compares the models on finite"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)


def test_missing_key_names_it_and_its_shape(tmp_path):
    arrays = _good()
    del arrays["mask"]
    with pytest.raises(UserError, match=r"no array 'mask'; expected shape \(N, 1, 16\) int64"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)


def test_extra_key_is_an_error(tmp_path):
    with pytest.raises(UserError, match="key 'labels' is not an input of the model"):
        load_samples(_npz(tmp_path, **_good(), labels=np.zeros(3)), INPUTS)


def test_wrong_shape_names_key_and_expected_shape(tmp_path):
    arrays = _good()
    arrays["x"] = np.zeros((3, 1, 8), np.float32)
    with pytest.raises(UserError, match=r"array 'x' has shape \(3, 1, 8\), expected \(N, 1, 16\)"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)


def test_missing_sample_axis_gets_a_hint(tmp_path):
    spec = [InputSpec("x", "float32", (2, 16))]
    with pytest.raises(UserError, match=r"without the leading sample axis"):
        load_samples(_npz(tmp_path, x=np.zeros((2, 16), np.float32)), spec)


@pytest.mark.parametrize("batch", [1, None, "batch"])
def test_samples_stacked_along_the_batch_dim(tmp_path, batch):
    # How a user who feeds the model batches saves them (a real audio model's [unk__749, 43844, 1])
    spec = [InputSpec("audio", "float32", (batch, 40, 1))]
    audio = np.random.default_rng(0).standard_normal((5, 40, 1)).astype(np.float32)
    samples = load_samples(_npz(tmp_path, audio=audio), spec)["audio"]
    assert samples.shape == (5, 1, 40, 1)
    np.testing.assert_array_equal(samples[3, 0], audio[3])
    with pytest.raises(UserError, match=r"has shape \(5, 41, 1\), expected \(N, "):
        load_samples(_npz(tmp_path, audio=np.zeros((5, 41, 1), np.float32)), spec)


def test_sample_counts_must_agree(tmp_path):
    arrays = _good()
    arrays["mask"] = np.ones((2, 1, 16), np.int64)
    with pytest.raises(UserError, match="x: 3, mask: 2"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)


def test_zero_samples(tmp_path):
    with pytest.raises(UserError, match="no samples"):
        load_samples(_npz(tmp_path, **_good(0)), INPUTS)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.full((3, 1, 16), "a"), "not numeric"),
        (np.zeros((3, 1, 16), np.complex64), "not numeric"),
        (np.full((3, 1, 16), 0.5), "non-integer values"),
        (np.full((3, 1, 16), np.inf), "non-integer values"),
    ],
    ids=["strings", "complex", "fractions", "inf"],
)
def test_values_the_input_cannot_hold(tmp_path, mask, message):
    arrays = _good()
    arrays["mask"] = mask
    with pytest.raises(UserError, match=message) as caught:
        load_samples(_npz(tmp_path, **arrays), INPUTS)
    assert "'mask'" in str(caught.value)


def test_integer_out_of_range(tmp_path):
    spec = [InputSpec("ids", "int32", (2,))]
    with pytest.raises(UserError, match="beyond the int32 range"):
        load_samples(_npz(tmp_path, ids=np.array([[1, 2**40]], np.int64)), spec)


def test_float_overflow(tmp_path):
    spec = [InputSpec("h", "float16", (2,))]
    with pytest.raises(UserError, match="beyond the float16 range"):
        load_samples(_npz(tmp_path, h=np.array([[1.0, 1e6]])), spec)


def test_bool_from_other_values(tmp_path):
    spec = [InputSpec("keep", "bool", (2,))]
    with pytest.raises(UserError, match="values other than 0 and 1"):
        load_samples(_npz(tmp_path, keep=np.array([[0, 2]])), spec)


def test_pickled_objects_are_refused(tmp_path):
    arrays = _good()
    arrays["mask"] = np.array([[{"evil": 1}]] * 3, dtype=object)
    with pytest.raises(UserError, match="holds Python objects"):
        load_samples(_npz(tmp_path, **arrays), INPUTS)


def test_not_an_npz(tmp_path):
    text = tmp_path / "data.npz"
    text.write_text("x,mask\n1,2\n")
    with pytest.raises(UserError, match="not an .npz archive"):
        load_samples(text, INPUTS)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 1, 16), np.float32))
    with pytest.raises(UserError, match="not an .npz archive"):
        load_samples(npy, INPUTS)


def test_truncated_npz(tmp_path):
    path = _npz(tmp_path, **_good(50))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="data.npz"):
        load_samples(path, INPUTS)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_samples(tmp_path / "absent.npz", INPUTS)


# --- random_samples -------------------------------------------------------------------------------


def test_random_samples_shapes_and_dtypes():
    specs = [
        InputSpec("x", "float32", (1, 3, 4, 4)),
        InputSpec("h", "float16", (2,)),
        InputSpec("ids", "int64", (1, 5)),
        InputSpec("keep", "bool", (5,)),
        InputSpec("sr", "int64", ()),
    ]
    samples = random_samples(specs, 4, seed=1)
    assert {k: (v.shape, v.dtype.name) for k, v in samples.items()} == {
        "x": ((4, 1, 3, 4, 4), "float32"),
        "h": ((4, 2), "float16"),
        "ids": ((4, 1, 5), "int64"),
        "keep": ((4, 5), "bool"),
        "sr": ((4,), "int64"),
    }
    assert (samples["ids"] == 1).all() and samples["keep"].all() and (samples["sr"] == 1).all()


def test_random_floats_are_standard_normal_and_seeded():
    spec = [InputSpec("x", "float32", (1000,))]
    a = random_samples(spec, 10, seed=7)["x"]
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05
    np.testing.assert_array_equal(a, random_samples(spec, 10, seed=7)["x"])
    assert not np.array_equal(a, random_samples(spec, 10, seed=8)["x"])


def test_random_samples_need_static_shapes():
    with pytest.raises(UserError, match=r"'x' \[N,3\] has dynamic dims; fix them with --input-shape x:"):
        random_samples([InputSpec("x", "float32", ("N", 3))], 2)
    with pytest.raises(ValueError):
        random_samples([InputSpec("x", "float32", (3,))], 0)
