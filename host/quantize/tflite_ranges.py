"""How activation ranges accumulate over the calibration samples, for ai-edge-quantizer.

ai-edge-quantizer 0.10 records each activation tensor's min and max per sample and merges them
with a moving average (factor 0.95; the first samples weigh most: with 8 samples the first one
holds 70%). That is a fair, outlier-robust range for a large tensor, whose per-sample extremes are
its rare values. A tensor of one or a few elements per sample (a presence flag, a handedness score)
has per-sample extremes equal to its values: the moving average collapses the range to about the
first sample's value (plus zero) and every other value clips. On MediaPipe's hand landmark model the
handedness logit got [-0.40, 0] for values spanning -1.71..0.57.

Modes (:data:`RANGES`):

* ``minmax`` (qbench's default): the extremes over all samples for tensors of at most
  :data:`SMALL` elements per sample, the quantizer's moving average for the others;
* ``extremes``: the extremes over all samples for every tensor (the quantizer's ``min_max_update``);
* ``moving-average``: the quantizer's own calibration, unchanged.

The quantizer has no histogram of activations (no percentile or entropy clipping): its calibration
functions report min and max only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

RANGES = ("minmax", "extremes", "moving-average")
#: at most this many elements per sample: the ``minmax`` mode takes the extremes over all samples
SMALL = 64


def calibrate(model: bytes, recipe: list[dict], signature_key: str, samples: Sequence[Mapping[str, np.ndarray]],
              ranges: str) -> dict[str, Any]:
    """ai-edge-quantizer's calibration of ``model`` (its QSVs: tensor name -> min/max, ...), ranges as ``ranges`` say.

    Args:
        model: the prepared float model.
        recipe: the quantization recipe (JSON form); it says which ops are calibrated, by which algorithm.
        signature_key: the signature the samples feed.
        samples: one ``{signature input: array}`` per sample.
        ranges: one of :data:`RANGES`.
    """
    from ai_edge_quantizer import calibrator, recipe_manager

    if ranges not in RANGES:
        raise ValueError(f"activation ranges {ranges!r} are not one of {', '.join(RANGES)}")
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    update = {} if ranges == "moving-average" else {"qsv_update_func": _both_update}
    calib = calibrator.Calibrator(bytes(model), **update)
    calib.calibrate({signature_key: samples}, manager)
    qsvs = calib.get_model_qsvs()
    if ranges == "moving-average":
        return qsvs
    sizes = _sizes(model)
    return {name: _pick(qsv, ranges == "extremes" or sizes.get(name, SMALL + 1) <= SMALL) for name, qsv in qsvs.items()}


def _both_update(qsv: dict, new_qsv: dict) -> dict:
    """The quantizer's own update (moving-average min/max, GPTQ's Hessian), plus the extremes so far."""
    from ai_edge_quantizer.utils import qsv_utils

    own = qsv_utils.gptq_and_moving_average_update if "hessian" in new_qsv else qsv_utils.moving_average_update
    # the calibrator stores a tensor's first QSV as it comes: the extremes start from its min/max
    return {**own(qsv, new_qsv), "all_min": np.minimum(qsv.get("all_min", qsv["min"]), new_qsv["min"]),
            "all_max": np.maximum(qsv.get("all_max", qsv["max"]), new_qsv["max"])}


def _pick(qsv: dict, extremes: bool) -> dict:
    out = {k: v for k, v in qsv.items() if k not in ("all_min", "all_max")}
    if extremes and "all_min" in qsv:
        out["min"], out["max"] = qsv["all_min"], qsv["all_max"]
    return out


def _sizes(model: bytes) -> dict[str, int]:
    """Tensor name -> elements per sample (the batch axis left out), over every subgraph."""
    from ai_edge_litert import schema_py_generated as fb

    root = fb.Model.GetRootAs(model, 0)
    sizes = {}
    for s in range(root.SubgraphsLength()):
        sg = root.Subgraphs(s)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            shape = t.ShapeAsNumpy() if t.ShapeLength() else np.array([1])
            sizes[t.Name().decode("utf-8", "replace")] = int(np.prod(np.maximum(shape[1:], 1)))
    return sizes
