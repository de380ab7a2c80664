"""Each CI gate, passing and failing, on realistic reports."""

from __future__ import annotations

import pytest

from qbench.host import gates
from qbench.host.gates import GATE_FAILED, Gates, evaluate, failures
from reportdata import make_report


@pytest.fixture
def report():
    return make_report()


def test_exit_codes_are_distinct_and_documented():
    assert GATE_FAILED == 3
    assert len({gates.EXIT_OK, gates.EXIT_ERROR, gates.EXIT_USAGE, GATE_FAILED}) == 4
    assert "GATE_FAILED" in gates.__doc__ and "3" in gates.__doc__


def test_no_gate_no_check(report):
    assert not Gates().active
    assert evaluate(report, Gates()) == []


def test_psnr_gate(report):
    psnr = report["summary"]["output_psnr_db"]
    assert failures(report, Gates(fail_under_psnr=psnr - 0.01)) == []
    [failed] = failures(report, Gates(fail_under_psnr=psnr + 0.01))
    assert failed.gate == "fail_under_psnr" and failed.value == psnr and "<" in failed.message


def test_psnr_gate_passes_exact_outputs_and_fails_missing_ones(report):
    report["summary"]["output_psnr_db"] = None
    report["summary"]["outputs_exact"] = True
    assert failures(report, Gates(fail_under_psnr=40.0)) == []
    report["summary"]["outputs_exact"] = False
    [failed] = failures(report, Gates(fail_under_psnr=40.0))
    assert failed.value is None and "not in the report" in failed.message


def test_speedup_gate(report):
    speedup = report["latency"]["speedup"]
    assert failures(report, Gates(fail_under_speedup=speedup)) == []
    [failed] = failures(report, Gates(fail_under_speedup=speedup * 2))
    assert failed.gate == "fail_under_speedup"
    del report["latency"]
    report["summary"]["speedup"] = None
    [missing] = failures(report, Gates(fail_under_speedup=1.0))
    assert "not in the report" in missing.message


def test_memory_gate_checks_int8_peak(report):
    peak = report["memory"]["int8"]["peak_mb"]
    assert failures(report, Gates(fail_over_memory=peak)) == []
    [failed] = failures(report, Gates(fail_over_memory=peak - 1))
    assert failed.gate == "fail_over_memory" and failed.value == peak


def test_drop_gate(report):
    [failed] = failures(report, Gates(fail_on_drop=True))
    assert failed.value == report["summary"]["drops"] and "2 sudden" in failed.message
    clean = make_report(drops_at=())
    assert failures(clean, Gates(fail_on_drop=True)) == []


def test_all_gates_reported_in_order(report):
    checks = evaluate(report, Gates(fail_under_psnr=1.0, fail_under_speedup=100.0, fail_over_memory=1e6,
                                    fail_on_drop=True))
    assert [c.gate for c in checks] == ["fail_under_psnr", "fail_under_speedup", "fail_over_memory", "fail_on_drop"]
    assert [c.passed for c in checks] == [True, False, True, False]


def test_thresholds_round_trip_through_the_report():
    given = Gates(fail_under_psnr=30.0, fail_on_drop=True)
    assert Gates.from_dict(given.to_dict()) == given
    assert Gates.from_dict({"fail_over_memory": 64, "unknown": 1}) == Gates(fail_over_memory=64)
    assert Gates.from_dict(None) == Gates()


def _with_outputs(report: dict, *outputs: dict) -> dict:
    return {**report, "outputs": list(outputs),
            "summary": {**report["summary"],
                        "top1_agreement": min((o.get("sequence_agreement", o.get("top1_agreement"))
                                               for o in outputs if "top1_agreement" in o), default=None)}}


def test_broken_output_gate(report):
    ok = {"name": "scores", "kind": "float", "verdict": "ok", "reasons": []}
    broken = {"name": "det", "kind": "float", "verdict": "broken", "reasons": ["slices 4-21 ... destroyed"]}
    assert failures(_with_outputs(report, ok), Gates(fail_on_broken=True)) == []
    [failed] = failures(_with_outputs(report, ok, broken), Gates(fail_on_broken=True))
    assert failed.gate == "fail_on_broken" and failed.value == ["det"] and "det" in failed.message
    [missing] = failures(_with_outputs(report, {"name": "old", "kind": "float"}), Gates(fail_on_broken=True))
    assert missing.value is None  # a report without verdicts cannot pass


def test_top1_gate_reads_sequence_agreement_for_ctc(report):
    classifier = {"name": "probs", "top1_agreement": 0.95}
    ctc = {"name": "text", "top1_agreement": 0.97, "sequence_agreement": 0.5}
    assert failures(_with_outputs(report, classifier), Gates(fail_under_top1=0.9)) == []
    [failed] = failures(_with_outputs(report, classifier, ctc), Gates(fail_under_top1=0.9))
    assert failed.value == 0.5 and "0.500 < 0.9" in failed.message
    [missing] = failures(_with_outputs(report, {"name": "boxes"}), Gates(fail_under_top1=0.9))
    assert missing.value is None and "no output is read by argmax" in missing.message
