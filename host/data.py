"""Input samples for calibration and comparison: read from an .npz file, or generated.

The file format is what ``numpy.savez`` writes: one array per model input, keyed by the input's
name, each with a leading sample axis, so its shape is ``(N, *input_shape)`` with the same N for
every input. An input whose batch dim is 1 or dynamic also takes its samples stacked along that
dim, ``(N, *input_shape[1:])``: how a user who feeds the model batches saves them, and a shape
that cannot mean anything else. Arrays are never unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from qbench.host.errors import UserError
from qbench.host.models import InputSpec


def load_samples(npz_path: Union[str, Path], inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Reads and checks samples for a model's inputs.

    Args:
        npz_path: an .npz archive with one array per input.
        inputs: the model's inputs, with resolved (static) shapes; a dynamic dim accepts any size.

    Returns:
        One array per input, keyed by input name, shaped ``(N, *input_shape)`` and cast to the
        input's dtype.

    Raises:
        UserError: the file is missing or not an .npz archive; a key is missing or unknown; an array
            has the wrong shape, a non-numeric dtype, values its input's dtype cannot hold, NaN or
            infinity, or a sample count different from the others.
    """
    path = Path(npz_path)
    arrays = _read_npz(path)
    expected = {spec.name: spec for spec in inputs}
    missing = [name for name in expected if name not in arrays]
    if missing:
        spec = expected[missing[0]]
        raise UserError(
            f"{path}: no array {spec.name!r}; expected shape {_expected(spec)} {spec.dtype} "
            f"(keys in the file: {_names(arrays)}; model inputs: {_names(expected)})"
        )
    extra = [name for name in arrays if name not in expected]
    if extra:
        raise UserError(
            f"{path}: key {extra[0]!r} is not an input of the model (model inputs: {_names(expected)})"
        )
    samples = {name: _checked(path, arrays[name], expected[name]) for name in expected}
    for name, array in samples.items():
        _check_finite(path, name, array)
    counts = {name: array.shape[0] for name, array in samples.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise UserError(f"{path}: arrays disagree on the number of samples (leading axis): {listing}")
    if samples and next(iter(counts.values())) == 0:
        raise UserError(f"{path}: the arrays hold no samples (leading axis is 0)")
    return samples


def random_samples(inputs: Sequence[InputSpec], n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded stand-in samples when the user gives no data.

    Float inputs get standard normal values. Integer and boolean inputs get ones: such inputs are
    indices, token ids, lengths or masks, and random integers would index out of range or turn a
    mask into noise, whereas 1 is a valid index, a length and an "on" mask for almost every model.

    Args:
        inputs: the model's inputs with static shapes.
        n: number of samples (>= 1).
        seed: seed for the float values.

    Returns:
        One array per input shaped ``(n, *input_shape)`` in the input's dtype.

    Raises:
        UserError: an input still has a dynamic dimension or a dtype that cannot be generated.
        ValueError: ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    rng = np.random.default_rng(seed)
    samples: dict[str, np.ndarray] = {}
    for spec in inputs:
        if not spec.is_static:
            raise UserError(
                f"input {spec.name!r} {spec.shape_text()} has dynamic dims; fix them with "
                f"--input-shape {spec.name}:D0,D1,..."
            )
        dtype = _dtype(spec)
        shape = (n, *spec.shape)
        if dtype.kind == "f":
            samples[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iub":
            samples[spec.name] = np.ones(shape, dtype=dtype)
        else:
            raise UserError(f"input {spec.name!r}: cannot generate {dtype.name} data; pass --data")
    return samples


def sample_shapes(*npz_paths: Union[str, Path, None]) -> dict[str, tuple[int, ...]]:
    """The shape of one sample of each array, ``array.shape[1:]``, read from the .npy headers only.

    The first file that has an array of a name gives its shape. What cannot be read is left out:
    :func:`load_samples` later says what is wrong with the file.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for npz_path in npz_paths:
        if npz_path is None:
            continue
        try:
            with zipfile.ZipFile(npz_path) as archive:
                for member in archive.namelist():
                    name = member.removesuffix(".npy")
                    if name in shapes:
                        continue
                    with archive.open(member) as f:
                        version = np.lib.format.read_magic(f)
                        header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                            else np.lib.format.read_array_header_2_0
                        shape = header(f)[0]
                    if len(shape) >= 1:
                        shapes[name] = tuple(int(d) for d in shape[1:])
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            continue
    return shapes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not an .npz archive (write it with numpy.savez(path, **{{input_name: array}}))")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise UserError(
                            f"{path}: array {key!r} holds Python objects; qbench reads numeric arrays only "
                            "and never unpickles data"
                        ) from exc
                    raise
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: unreadable .npz archive: {exc}") from exc
    return arrays


def _checked(path: Path, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise UserError(
            f"{path}: array {spec.name!r} has dtype {array.dtype} (not numeric); input {spec.name!r} "
            f"is {spec.dtype} with shape {_expected(spec)}"
        )
    if spec.shape is not None and batch_stacked(array.shape, spec.shape):
        array = array[:, None]
    if spec.shape is not None and not _shape_fits(array.shape, spec.shape):
        hint = ""
        if _shape_fits((1, *array.shape), spec.shape):
            hint = " (it looks like one sample without the leading sample axis: save array[None])"
        raise UserError(
            f"{path}: array {spec.name!r} has shape {tuple(array.shape)}, expected {_expected(spec)}{hint}"
        )
    return _cast(path, array, spec)


def _check_finite(path: Path, name: str, array: np.ndarray) -> None:
    """Refuses NaN and infinity: they reach every layer, and no error figure exists for them."""
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return
    bad = ~np.isfinite(array.reshape(array.shape[0], -1))
    samples = np.flatnonzero(bad.any(axis=1))
    first = array[samples[0]]
    kinds = " and ".join(k for k, mask in (("NaN", np.isnan(first)), ("inf", np.isinf(first))) if mask.any())
    more = f" (and {samples.size - 1} more of the {array.shape[0]} samples)" if samples.size > 1 else ""
    raise UserError(f"{path}: input {name!r} holds {kinds} in sample {int(samples[0])}{more}: "
                    "qbench compares the models on finite inputs only")


def batch_stacked(actual: tuple, dims: tuple) -> bool:
    """Whether ``actual`` holds batch-1 samples stacked along the batch dim of an input shaped ``dims``.

    That is ``(N, *dims[1:])`` where ``dims[0]`` is 1 or dynamic (None or a name).
    """
    return (len(dims) >= 1 and len(actual) == len(dims) and (not isinstance(dims[0], int) or dims[0] == 1)
            and _shape_fits((actual[0], 1, *actual[1:]), dims))


def _shape_fits(actual: tuple, dims: tuple) -> bool:
    if len(actual) != len(dims) + 1:
        return False
    return all(not isinstance(d, int) or d == a for d, a in zip(dims, actual[1:]))


def _cast(path: Path, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Casts to the input's dtype when no value changes (or, float to float, only by rounding)."""
    target = _dtype(spec)
    if array.dtype == target:
        return array
    problem = None
    if target.kind == "f":
        with np.errstate(over="ignore"):
            overflowed = np.isfinite(array) & ~np.isfinite(array.astype(target))
        if overflowed.any():
            problem = f"values beyond the {target.name} range"
    elif target.kind == "b":
        if not np.isin(array, (0, 1)).all():
            problem = "values other than 0 and 1"
    elif target.kind in "iu":
        if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
            problem = "non-integer values"
        elif array.size and (array.min() < np.iinfo(target).min or array.max() > np.iinfo(target).max):
            problem = f"values beyond the {target.name} range"
    else:
        problem = "a dtype qbench cannot feed"
    if problem:
        raise UserError(
            f"{path}: array {spec.name!r} ({array.dtype}) has {problem}; input {spec.name!r} is {target.name}"
        )
    return array.astype(target)


def _dtype(spec: InputSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError as exc:
        raise UserError(f"input {spec.name!r} has dtype {spec.dtype}, which qbench cannot feed") from exc


def _expected(spec: InputSpec) -> str:
    if spec.shape is None:
        return "(N, ...)"
    dims = ["N", *("?" if not isinstance(d, int) else str(d) for d in spec.shape)]
    return "(N,)" if len(dims) == 1 else "(" + ", ".join(dims) + ")"


def _names(items) -> str:
    return ", ".join(repr(name) for name in items) or "none"
