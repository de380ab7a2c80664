"""The agent's output-structure reduction (agent/structure.py) against plain numpy, and the host's verdicts on it."""

from __future__ import annotations

import numpy as np
import pytest

from qbench.agent import structure
from qbench.host.compare import verdicts
from qbench.protocols.messages import CapturePair, PairStats, QParams, StructureRequest, from_dict, to_dict


def _reduce(request: StructureRequest, samples, qparams: QParams | None = None):
    """The StructureStats of (float, int8) samples, after a round trip through the wire form."""
    pair = CapturePair("o", "o", qparams=qparams, structure=request)
    accs = structure.accumulators([pair])
    for f, q in samples:
        structure.update(accs, [0], [(f, q)])
    stats = [PairStats()]
    structure.finish(accs, stats)
    return from_dict(PairStats, to_dict(stats[0])).structure


def _detector(rng, scores_max: float = 0.45):
    """[1,22,2100]: rows 0-3 boxes up to 316, rows 4-21 scores, as YOLOv8 concatenates them."""
    return np.concatenate([rng.uniform(0, 316, (1, 4, 2100)), rng.uniform(0, scores_max, (1, 18, 2100))],
                          axis=1).astype(np.float32)


def test_slice_sums_match_numpy():
    rng = np.random.default_rng(0)
    scale = 316 / 127
    qp = QParams([scale], [0])
    samples = [(f, np.clip(np.round(f / scale), -128, 127).astype(np.int8)) for f in (_detector(rng), _detector(rng))]
    st = _reduce(StructureRequest(), samples, qp)
    [sl] = st.slices  # only axis 1 has 2..64 entries
    assert sl.axis == 1 and len(sl.count) == 22
    f = np.concatenate([s[0] for s in samples]).astype(np.float64)
    q = np.concatenate([s[1] for s in samples]).astype(np.float64) * np.float64(scale)
    np.testing.assert_allclose(sl.sum_sq_float, (f ** 2).sum(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(sl.sum_sq_err, ((f - q) ** 2).sum(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(sl.int8_max, q.max(axis=(0, 2)))
    assert sl.count == [2 * 2100] * 22


def test_boxes_and_scores_under_one_scale_are_broken_whatever_the_psnr():
    """Scores 0..0.45 under a step of 2.5 all round to 0: the slice group is destroyed."""
    rng = np.random.default_rng(1)
    scale = 316 / 127
    f = _detector(rng)
    st = _reduce(StructureRequest(), [(f, np.clip(np.round(f / scale), -128, 127).astype(np.int8))], QParams([scale], [0]))
    figures = verdicts.structure_figures(st)
    small, large = figures["slices"]["groups"]
    assert small["slices"] == list(range(4, 22)) and small["destroyed"] and small["sqnr_db"] == 0.0
    assert large["slices"] == [0, 1, 2, 3] and not large["destroyed"] and large["sqnr_db"] > 30
    verdict, reasons = verdicts.judge({"kind": "float", "psnr_db": 45.0, "sqnr_db": 40.0, **figures})
    assert verdict == "broken" and reasons[0].startswith("slices 4-21 along axis 1")
    # the same output with its own scale for the scores: one step of 1/255, nothing destroyed
    q = f.copy()
    q[:, 4:] = np.round(f[:, 4:] * 255) / 255
    q[:, :4] = np.round(f[:, :4] / scale) * scale
    ok = verdicts.structure_figures(_reduce(StructureRequest(), [(f, q)]))
    assert verdicts.judge({"kind": "float", "sqnr_db": 40.0, **ok}) == ("ok", [])


def test_a_rarely_seen_class_alone_does_not_break_the_scores():
    rng = np.random.default_rng(2)
    f = _detector(rng, scores_max=1.0)
    f[:, 7] *= 1e-3  # a class that never fires: its row rounds to 0 even under a 1/255 step
    q = np.concatenate([np.round(f[:, :4] / 2.5) * 2.5, np.round(f[:, 4:] * 255) / 255], axis=1)
    figures = verdicts.structure_figures(_reduce(StructureRequest(), [(f, q)]))
    assert verdicts.judge({"kind": "float", "sqnr_db": 40.0, **figures})[0] == "ok"


def _fields(rng, n: int = 3549) -> np.ndarray:
    """[1, n, 6] as YOLOX writes them: 4 box fields up to about 2.5, objectness and one class score up to 0.8."""
    boxes = rng.normal(0, 1.0, (1, n, 4)).clip(-2.5, 2.5)
    scores = 0.8 / (1 + np.exp(-rng.normal(-4, 2, (1, n, 2))))
    return np.concatenate([boxes, scores], axis=2).astype(np.float32)


def test_a_field_its_neighbours_outweigh_is_judged_on_its_own():
    """Objectness ruined (SQNR about 5 dB) inside an output whose pooled SQNR is above 20 dB: degraded."""
    rng = np.random.default_rng(3)
    f = _fields(rng)
    q = np.round(f * 255) / 255  # every field on a fine step ...
    noise = rng.normal(0, 1, f[..., 4].shape) * np.sqrt(np.mean(f[..., 4] ** 2) / 10 ** 0.5)
    q[..., 4] = f[..., 4] + noise  # ... but objectness at 5 dB SQNR
    figures = verdicts.structure_figures(_reduce(StructureRequest(), [(f, q.astype(np.float32))]))
    sliced = figures["slices"]
    assert sliced["axis"] == 2 and sliced["count"] == 6 and not sliced["groups"]  # one value range
    err = ((f.astype(np.float64) - q.astype(np.float32)) ** 2).sum(axis=(0, 1))
    field_sqnr = 10 * np.log10((f.astype(np.float64) ** 2).sum(axis=(0, 1)) / err)
    assert sliced["sqnr_db"][4] == pytest.approx(field_sqnr[4], abs=1e-3) and field_sqnr[4] < 6
    pooled = 10 * np.log10((f.astype(np.float64) ** 2).sum() / err.sum())
    assert pooled > 20  # the pooled figure alone would pass
    verdict, reasons = verdicts.judge({"kind": "float", "sqnr_db": float(pooled), **figures})
    assert verdict == "degraded" and reasons == [
        f"field(s) along axis 2 below 20 dB SQNR on their own: 4 ({field_sqnr[4]:.1f} dB)"]
    # the same with a fine step for objectness too: every field above 20 dB
    q[..., 4] = np.round(f[..., 4] * 255) / 255
    fine = verdicts.structure_figures(_reduce(StructureRequest(), [(f, q.astype(np.float32))]))
    assert verdicts.judge({"kind": "float", "sqnr_db": 40.0, **fine}) == ("ok", [])


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def test_argmax_agreement_over_thousands_of_classes_matches_numpy():
    rng = np.random.default_rng(3)
    f = _softmax(rng.normal(scale=3.0, size=(1, 40, 6625)))
    q = np.clip(np.round(f * 255), 0, 255).astype(np.uint8)  # ties where probabilities are small
    st = _reduce(StructureRequest(class_axis=-1, top_k=5), [(f, q)], QParams([1 / 255], [0], dtype="uint8"))
    d = q.astype(np.float64) / 255
    top_f, top_q = f.argmax(-1), d.argmax(-1)
    assert st.positions == 40 and st.top1_agree == int((top_f == top_q).sum())
    top5 = np.argsort(-d, axis=-1, kind="stable")[..., :5]
    # the int8 top-5 is ambiguous among ties: the agent's count lies between the strict and tied readings
    strict = int((top5 == top_f[..., None]).any(-1).sum())
    tied = int((d[0, np.arange(40), top_f[0]] >= np.sort(d, axis=-1)[..., -5]).sum())
    assert strict <= st.topk_agree <= tied


def test_ctc_reading_collapses_repeats_and_blanks():
    assert structure.ctc_symbols(np.array([0, 3, 3, 0, 3, 5, 5, 0]), blank=0) == [3, 3, 5]
    assert structure.levenshtein([1, 2, 3], [1, 3]) == 1 and structure.levenshtein([], [4, 4]) == 2
    steps = np.array([0, 7, 7, 0, 9, 0, 0, 11, 11, 0])
    logits = np.full((1, steps.size, 20), -5.0)
    logits[0, np.arange(steps.size), steps] = 5.0
    f = _softmax(logits)
    blind = np.zeros_like(f)
    blind[..., 0] = 1.0  # every step blank: reads nothing
    st = _reduce(StructureRequest(class_axis=-1, ctc_blank=0), [(f, f), (f, blind)])
    assert (st.sequences, st.sequences_equal, st.float_nonempty, st.int8_nonempty) == (2, 1, 2, 1)
    assert st.edit_distance == 3 and st.float_symbols == 6
    figures = verdicts.structure_figures(st)
    assert figures["cer"] == 0.5 and figures["sequence_agreement"] == 0.5
    never = verdicts.structure_figures(_reduce(StructureRequest(class_axis=-1, ctc_blank=0), [(f, blind)]))
    verdict, reasons = verdicts.judge({"kind": "float", "sqnr_db": 30.0, **never})
    assert verdict == "broken" and reasons == ["int8 reads no text: the float model reads text in 1 of 1 sequences"]


def test_index_outputs_are_read_as_sequences():
    f = np.array([[0, 4, 4, 0, 2, 2, 2, 0, 6]], np.int64)
    q = np.array([[0, 4, 0, 0, 2, 0, 2, 0, 0]], np.int64)
    st = _reduce(StructureRequest(ctc_blank=0, indices=True), [(f, q)])
    assert (st.sequences, st.sequences_equal, st.edit_distance, st.float_symbols) == (1, 0, 1, 3)  # 4 2 6 vs 4 2 2


def test_decisions_of_a_probability_output_match_numpy():
    rng = np.random.default_rng(4)
    f = (1 / (1 + np.exp(-rng.normal(size=(2, 1, 300))))).astype(np.float32)
    q = np.clip(np.round(f * 255 + rng.normal(scale=20, size=f.shape)), 0, 255).astype(np.uint8)
    st = _reduce(StructureRequest(threshold=0.5), [(f[0], q[0]), (f[1], q[1])], QParams([1 / 255], [0], dtype="uint8"))
    pf, pq = f > 0.5, q.astype(np.float64) / 255 > 0.5
    assert (st.decisions, st.float_positive, st.int8_positive, st.both_positive) == (
        600, int(pf.sum()), int(pq.sum()), int((pf & pq).sum()))
    figures = verdicts.structure_figures(st)
    assert figures["decision_f1"] == pytest.approx(2 * (pf & pq).sum() / (pf.sum() + pq.sum()), abs=5e-5)


@pytest.mark.parametrize("both, verdict", [(19, "ok"), (15, "degraded"), (5, "broken")])
def test_decision_f1_thresholds(both, verdict):
    """20 float positives and 20 int8 ones, ``both`` of them shared: F1 0.95, 0.75, 0.25."""
    st = from_dict(PairStats, {"structure": {"decisions": 1000, "float_positive": 20, "int8_positive": 20,
                                             "both_positive": both}}).structure
    assert verdicts.judge({"kind": "float", "sqnr_db": 30.0, **verdicts.structure_figures(st)})[0] == verdict


def test_int8_positives_without_a_float_positive_are_false_alarms():
    st = _reduce(StructureRequest(threshold=0.5), [(np.full((1, 8), 0.2, np.float32), np.full((1, 8), 0.7, np.float32))])
    figures = verdicts.structure_figures(st)
    assert figures["decision_f1"] == 0.0 and figures["decisions"]["int8_positive"] == 8
    verdict, reasons = verdicts.judge({"kind": "float", "sqnr_db": 30.0, **figures})
    assert verdict == "broken" and reasons[0].startswith("decisions above 0.5: F1 0.00")


@pytest.mark.parametrize("sqnr, verdict", [(0.0, "degraded"), (12.0, "degraded"), (30.0, "ok")])
def test_scores_below_the_threshold_in_both_models_test_no_decision(sqnr, verdict):
    """openwakeword's hey_jarvis head as .tflite on speech without the wake word: every score 1e-5..1e-4,
    every int8 score 0 (LiteRT's LOGISTIC step is 1/256), SQNR 0 dB. Both models decide the same."""
    f = np.full((1, 8), 1e-4, np.float32)
    st = _reduce(StructureRequest(threshold=0.5), [(f, np.zeros_like(f))])
    figures = verdicts.structure_figures(st)
    assert figures["decision_f1"] is None
    got, reasons = verdicts.judge({"kind": "float", "sqnr_db": sqnr, "float_max": 1e-4, **figures})
    assert got == verdict and len(reasons) == 1
    assert "no value exceeds the decision threshold 0.5 in either model (float values up to 0.0001)" in reasons[0]
    assert reasons[0].startswith(f"output SQNR {sqnr:.1f} dB") == (sqnr < 20)


def test_a_sigmoid_output_asks_for_decisions():
    from qbench.host.compare import output_structure

    assert output_structure.request([("Reshape", False), ("Sigmoid", False)]).threshold == 0.5
    assert output_structure.request([("LOGISTIC", False)]).threshold == 0.5
    assert output_structure.request([("Relu", False), ("Sigmoid", False)]).threshold is None


def test_an_if_whose_branches_both_make_a_sigmoid_score_is_a_probability(tmp_path):
    """The built head (tflite_models.scored_if): the then-branch scores with its own LOGISTIC, the else-branch
    passes the IF's argument through, a LOGISTIC of the enclosing graph."""
    import tflite_models as M

    from qbench.host.compare.tflite_matching import output_structures

    (tmp_path / "head.tflite").write_bytes(M.scored_if())
    assert output_structures(tmp_path / "head.tflite")["score"].threshold == 0.5


@pytest.mark.parametrize("else_op, threshold", [("Identity", 0.5), ("Relu", None)])
def test_an_onnx_if_is_a_probability_when_both_branches_make_a_sigmoid(tmp_path, else_op, threshold):
    """openwakeword's hey_jarvis head: If(score >= 0.5) then a verifier's Sigmoid, else the score itself
    (an Identity of the enclosing graph's Sigmoid). A branch that makes something else is no probability."""
    from onnx import TensorProto, helper

    from qbench.host.compare import matching

    value = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])]
    then_g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["out"])], "then", [], value)
    else_g = helper.make_graph([helper.make_node(else_op, ["score"], ["out"])], "else", [], value)
    graph = helper.make_graph([
        helper.make_node("Sigmoid", ["x"], ["score"]),
        helper.make_node("Constant", [], ["half"], value=helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])),
        helper.make_node("GreaterOrEqual", ["score", "half"], ["high"]),
        helper.make_node("If", ["high"], ["y"], then_branch=then_g, else_branch=else_g),
    ], "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert matching.output_structures(model)["y"].threshold == threshold


def test_scores_of_a_decoder_loop_keep_their_repeats():
    from qbench.host.compare import output_structure

    assert not output_structure.request([("SOFTMAX", True), ("RESHAPE", False), ("WHILE", False)]).collapse_repeats
    assert not output_structure.request([("Softmax", True), ("Loop", False)]).collapse_repeats
    assert output_structure.request([("Softmax", True), ("MatMul", False)]).collapse_repeats
    assert structure.ctc_symbols(np.array([0, 3, 3, 0, 3]), blank=0, collapse=False) == [3, 3, 3]


@pytest.mark.parametrize("top1, verdict", [(0.95, "ok"), (0.8, "degraded"), (0.3, "broken")])
def test_top1_thresholds(top1, verdict):
    out = {"kind": "float", "sqnr_db": 30.0, "top1_agreement": top1, "topk_agreement": 1.0, "top_k": 5,
           "positions": 100}
    assert verdicts.judge(out)[0] == verdict


def test_a_softmax_written_out_is_read_by_argmax():
    """jax2tf writes softmax as exp(x - max) / sum (magika, Google's file-type detector): the output is a class output."""
    import onnx
    from onnx import TensorProto, helper

    from qbench.host.compare.matching import output_structures

    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="dense"),
             helper.make_node("ReduceMax", ["logits"], ["top"], name="max", axes=[-1]),
             helper.make_node("Sub", ["logits", "top"], ["shifted"], name="shift"),
             helper.make_node("Exp", ["shifted"], ["e"], name="exp"),
             helper.make_node("ReduceSum", ["e", "axes"], ["total"], name="sum"),
             helper.make_node("Div", ["e", "total"], ["probs"], name="normalise"),
             helper.make_node("Div", ["logits", "total"], ["ratio"], name="not_a_softmax")]
    graph = helper.make_graph(nodes, "written_softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("ratio", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [8, 5], [0.1] * 40),
                               helper.make_tensor("axes", TensorProto.INT64, [1], [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    requests = output_structures(onnx.load_from_string(model.SerializeToString()))
    assert requests["probs"].class_axis == -1
    assert requests["ratio"].class_axis is None
