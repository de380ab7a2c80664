"""report.html's marks, warnings and layout; long TFLite names in report.html, compare.html and the terminal.

The layout checks load the pages in a real headless Chromium (Debian's `chromium`) at 1280 and 1920 px,
through the probe of test_report_html, which reads the page's scroll width and where its first chart sits.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from rich.console import Console

from qbench.agent.worker import NONFINITE_DIFF, _max_abs_diff
from qbench.host.cli.render import NAME_WIDTH, render_report, short_name
from qbench.host.cli.render_compare import render_compare
from qbench.host.gates import Gates
from qbench.host.report import alerts, fidelity, figures, histograms, profile
from qbench.host.report.compare import build_compare
from qbench.host.report.html import write_compare_html, write_html
from reportdata import make_report
from test_report_html import render

#: a MediaPipe-style TFLite name: the ops LiteRT fused into one, joined by ';' and no space
TFLITE = ("model/backbone/stage{i}/block7/depthwise_conv2d/depthwise;model/backbone/stage{i}/block7/batch_norm/"
          "FusedBatchNormV3;model/backbone/stage{i}/block7/re_lu_6/Relu6;model/backbone/stage{i}/block7/conv2d/"
          "Conv2D;model/backbone/stage{i}/block7/bias_add/BiasAdd")


def _tflite_report(seed: int = 0, **kwargs) -> dict:
    """A report whose layers, worst layers and drops all carry long `;`-joined names."""
    report = make_report(n_layers=40, seed=seed, **kwargs)
    renamed = {layer["name"]: TFLITE.format(i=layer["index"]) for layer in report["layers"]}
    for layer in report["layers"]:
        layer["name"] = renamed[layer["name"]]
        layer["parents"] = [renamed.get(p, p) for p in layer["parents"]]
    for weight in report["weights"]:
        weight["layer"] = renamed[weight["layer"]]
    report["summary"]["worst_layers"] = [renamed[n] for n in report["summary"]["worst_layers"]]
    report["summary"]["drops"] = [renamed[n] for n in report["summary"]["drops"]]
    return report


def _slow_int8(report: dict, speedup: float = 0.36, psnr: float = 10.9) -> dict:
    """The issue's run: int8 0.36x the float speed, one output at 10.9 dB and broken."""
    report["latency"]["speedup"] = report["summary"]["speedup"] = speedup
    out = report["outputs"][0]
    out.update(psnr_db=psnr, verdict="broken", reasons=["output SQNR 0.4 dB: the error is as large as the signal"])
    report["summary"].update(output_psnr_db=psnr, verdict="broken")
    return report


# ---- 1. bad values are marked, with words as well as colour --------------------------------------------------


def _card(html: str, label: str) -> str:
    match = re.search(r'<div class="(card[^"]*)"><div class="label">' + re.escape(label) + r"</div>(.*?)</div></div>",
                      html, re.S)
    assert match, label
    return match.group(1) + " " + match.group(2)


def test_a_slow_int8_model_and_a_broken_output_are_marked_bad(tmp_path):
    good = make_report(n_layers=10)
    good["outputs"][0]["verdict"] = good["summary"]["verdict"] = "ok"
    bad = _slow_int8(make_report(n_layers=10))
    good_html = write_html(good, tmp_path / "good.html").read_text(encoding="utf-8")
    bad_html = write_html(bad, tmp_path / "bad.html").read_text(encoding="utf-8")
    for label in ("speedup (float/int8)", "output PSNR", "output verdict"):
        assert "card bad" in _card(bad_html, label) and "\u2718" in _card(bad_html, label), label
        assert _card(good_html, label).startswith("card "), label
        assert "bad" not in _card(good_html, label) and "warn" not in _card(good_html, label), label
    assert "int8 slower than float" in _card(bad_html, "speedup (float/int8)")
    assert "below 20 dB" in _card(bad_html, "output PSNR")
    # the outputs table: the row, the PSNR cell and the verdict cell, each with its words
    row = re.search(r'<tr class="output-bad">(.*?)</tr>', bad_html, re.S).group(1)
    assert re.search(r'class="num bad"[^>]*>10.90<span class="why">\u2718 below 20 dB</span>', row)
    assert '<td class="bad" data-v="broken"><span class="why">\u2718 broken</span></td>' in row
    assert '<tr class="output-' not in good_html


def test_a_degraded_output_between_20_and_30_db_is_a_warning(tmp_path):
    report = make_report(n_layers=10)
    report["outputs"][0].update(psnr_db=25.0, verdict="degraded")
    report["summary"].update(output_psnr_db=25.0, verdict="degraded")
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "card warn" in _card(html, "output PSNR") and "\u26a0 below 30 dB" in _card(html, "output PSNR")
    assert "card warn" in _card(html, "output verdict") and "\u26a0 degraded" in _card(html, "output verdict")
    assert '<tr class="output-warn">' in html


def test_a_failed_gate_marks_its_card_even_when_the_value_alone_is_fine(tmp_path):
    """A 2.4x speedup is good, but not against --fail-under-speedup 3: the gate in report.json decides."""
    report = make_report(n_layers=10, gates={"fail_under_speedup": 3.0, "fail_under_psnr": 20.0})
    assert 1.0 < report["latency"]["speedup"] < 3.0
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    speedup = _card(html, "speedup (float/int8)")
    assert "card bad" in speedup and "gate failed" in speedup and "int8 slower" not in speedup
    assert "bad" not in _card(html, "output PSNR")  # its gate passed
    assert "gates failed: fail_under_speedup" in html[: html.index("<h2>PSNR per layer</h2>")]


def test_the_terminal_marks_a_speedup_below_one_in_the_same_words():
    for speedup, marked in ((0.36, True), (2.4, False)):
        report = make_report(n_layers=6)
        report["latency"]["speedup"] = speedup
        console = Console(record=True, width=200)
        render_report(report, console)
        assert ("\u2718 int8 slower than float" in console.export_text()) is marked, speedup


# ---- 2. random calibration and 5. noisy timings are warnings -------------------------------------------------


def test_random_calibration_is_a_warning_above_the_cards_not_a_note(tmp_path):
    report = make_report(n_layers=10)
    report["notes"] = ["ran onnxruntime's quantization pre-processing", alerts.RANDOM_CALIBRATION]
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    top = html[: html.index('<div class="cards">')]
    warnings = re.search(r'<div class="note warn" id="run-warnings">(.*?)</div>', top, re.S).group(1)
    assert "calibrated on random data" in warnings and "--calibration" in warnings
    notes = re.search(r'<div class="note"><b>Notes</b>(.*?)</div>', html, re.S).group(1)
    assert "pre-processing" in notes and "random" not in notes
    report["notes"] = ["ran onnxruntime's quantization pre-processing"]
    assert 'id="run-warnings"' not in write_html(report, tmp_path / "real.html").read_text(encoding="utf-8")


def _latency(median: float, p90: float) -> dict:
    return {"median_ms": median, "p90_ms": p90, "min_ms": median * 0.9, "runs": 100}


def test_noisy_timings_are_p90_over_median_above_1_5_in_report_html_and_the_terminal(tmp_path):
    report = make_report(n_layers=10)
    report["latency"]["float"].update(_latency(10.0, 15.0))  # exactly 1.5: not noisy
    report["latency"]["int8"].update(_latency(4.0, 6.4))  # 1.6: noisy
    assert alerts.NOISY_P90_OVER_MEDIAN == 1.5
    [line] = alerts.noisy_timings(report)
    assert line.startswith("int8 timings are noisy: p90 6.4 ms is 1.60x the median 4 ms")
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "int8 timings are noisy" in html[: html.index('<div class="cards">')]
    assert "float timings are noisy" not in html
    console = Console(record=True, width=300)
    render_report(report, console)
    assert "timing: int8 timings are noisy: p90 6.4 ms is 1.60x" in console.export_text()
    report["latency"]["int8"].update(_latency(4.0, 4.4))
    assert alerts.noisy_timings(report) == []
    quiet = Console(record=True, width=300)
    render_report(report, quiet)
    assert "noisy" not in quiet.export_text()


def _op(op_type: str, median: float, mean: float | None = None) -> dict:
    return {"op_type": op_type, "provider": "CPUExecutionProvider", "mean_ms": mean if mean is not None else median,
            "median_ms": median}


def test_a_slower_int8_model_says_which_kernels_grew_by_their_per_run_medians(tmp_path):
    # ppocr-cls on an AVX-512 VNNI CPU, ONNX Runtime 1.32: float convs fuse HardSwish; int8 runs it as Add + Mul
    report = make_report(n_layers=10)
    report["latency"]["speedup"] = 0.53
    float_ops = [_op("Conv", 0.446), _op("FusedConv", 0.019), _op("ReorderOutput", 0.086), _op("Mul", 0.050),
                 _op("MaxPool", 0.0115)]
    int8_ops = [_op("QLinearConv", 0.850), _op("QLinearMul", 0.319), _op("QLinearAdd", 0.201),
                _op("MaxPool", 0.147), _op("Transpose", 0.015, mean=0.53)]  # one slow run: its mean, not its median
    report["profile"] = {"float": float_ops, "int8": int8_ops, "runs": 10,
                         "families": profile.families(float_ops, int8_ops)}
    assert [f["family"] for f in report["profile"]["families"]][:4] == ["Conv", "Mul", "Add", "MaxPool"]
    [line] = alerts.int8_slower(report)
    assert line.startswith("int8 runs at 0.53x the float model's speed: kernel time per inference 0.612 ms float, "
                           "1.53 ms int8; most of it added by Conv 0.465 -> 0.85 ms, Mul 0.05 -> 0.319 ms, "
                           "Add 0 -> 0.201 ms (none in float), MaxPool 0.0115 -> 0.147 ms")
    assert "layout" not in line
    console = Console(record=True, width=400)
    render_report(report, console)
    assert "speed: int8 runs at 0.53x" in console.export_text()
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "int8 runs at 0.53x" in html[: html.index('<div class="cards">')]


def test_int8_kernels_faster_but_the_run_slower_points_outside_the_kernels():
    report = make_report(n_layers=6)
    report["latency"]["speedup"] = 0.8
    report["profile"] = {"families": profile.families([_op("Conv", 0.5)], [_op("QLinearConv", 0.3)])}
    [line] = alerts.int8_slower(report)
    assert "although its kernels take less time" in line and "outside the kernels" in line
    del report["profile"]
    assert alerts.int8_slower(report) == ["int8 runs at 0.80x the float model's speed (no per-operator profile "
                                          "to say where: --profile-runs)."]
    report["profile"] = {"float": [], "int8": [], "notes": {"float": "LiteRT's Python API exposes no op profiler"}}
    assert alerts.int8_slower(report) == ["int8 runs at 0.80x the float model's speed (LiteRT's Python API exposes "
                                          "no op profiler, so qbench cannot say where)."]
    report["latency"]["speedup"] = 1.0
    assert alerts.int8_slower(report) == []


# ---- 4. the latency chart: few, large tick labels; its table in ms -------------------------------------------


def test_latency_ticks_are_few_and_large_and_the_table_has_its_unit(tmp_path):
    report = make_report(n_layers=10)
    # a spread like a tiny model's on a loaded machine: log axes on both subplots
    rng = np.random.default_rng(3)
    for model, base in (("float", 0.045), ("int8", 0.1)):
        samples = np.concatenate([base + rng.gamma(2.0, base / 10, 4000), rng.uniform(1, 12, 100)])
        report["latency"][model]["samples_ms"] = samples.round(5).tolist()
    fig = figures.latency(report["latency"])
    for axis in (fig.layout.yaxis, fig.layout.xaxis2):
        assert axis.type == "log" and 2 <= len(axis.tickvals) <= figures.LATENCY_TICKS
        assert list(axis.ticktext) == [f"{v:g}" for v in axis.tickvals]  # "0.05", never a bare "5"
    assert fig.layout.xaxis.tickfont.size == figures.LATENCY_FONT_SIZE >= 14
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    latency_table = html[html.index("<h2>Latency</h2>"):html.index("<h2>Time per operator")]
    headers = re.findall(r"<th>(.*?)</th>", latency_table)
    assert headers[1:9] == ["init ms", "first ms", "min ms", "median ms", "mean ms", "p90 ms", "p99 ms", "std ms"]


@pytest.mark.browser
def test_latency_axes_render_with_at_most_six_labelled_ticks(tmp_path):
    report = make_report(n_layers=10, profile=False, histograms=False)
    rng = np.random.default_rng(4)
    for model, base in (("float", 0.045), ("int8", 0.1)):
        report["latency"][model]["samples_ms"] = np.concatenate(
            [base + rng.gamma(2.0, base / 10, 2000), rng.uniform(1, 12, 50)]).round(5).tolist()
    seen = render(write_html(report, tmp_path / "report.html"), tmp_path)
    assert seen["errors"] == []
    ticks: dict[str, list] = {}
    for axis, label, size in _plot(seen, "Latency per inference")["ticks"]:
        ticks.setdefault(axis, []).append((label, size))
    # the box plot (x: float, int8; y: ms, log) and the histogram (x: ms, log; y: runs)
    assert set(ticks) == {"xtick", "ytick", "x2tick", "y2tick"}, ticks
    assert [label for label, _ in ticks["xtick"]] == ["float", "int8"]
    for axis in ("ytick", "x2tick", "y2tick"):
        assert 2 <= len(ticks[axis]) <= figures.LATENCY_TICKS + 1, ticks[axis]  # nticks is plotly's upper bound, +-1
    assert all(size >= figures.LATENCY_FONT_SIZE for labels in ticks.values() for _, size in labels)


def _plot(seen: dict, title: str) -> dict:
    [plot] = [plot for plot in seen["plots"] if title in plot["title"]]
    return plot


# ---- 3. a chart above the fold, and 7. long names within the page at 1280 and 1920 px ------------------------


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_html_fits_the_window_and_shows_a_chart_above_the_fold(tmp_path, width):
    report = _slow_int8(_tflite_report(gates={"fail_under_psnr": 30.0, "fail_on_drop": True}))
    report["notes"] = [alerts.RANDOM_CALIBRATION, "evaluated on 8 random samples (seed 0)"]
    report["latency"]["int8"]["p90_ms"] = 3 * report["latency"]["int8"]["median_ms"]  # a noisy-timing warning too
    report["layers"][3]["prepared_name"] = "_inlfunc_HardSwish_token_7_HS_X;" + "x" * 120
    path = write_html(report, tmp_path / "report.html")
    seen = render(path, tmp_path, window=(width, 800))
    assert seen["errors"] == []
    layout = seen["layout"]
    assert layout["scroll_width"] <= layout["client_width"], layout
    assert layout["overflowing"] == [], layout
    # the per-layer chart starts in the first screen, with room to be seen
    assert layout["first_plot_top"] is not None and layout["first_plot_top"] < layout["inner_height"] - 200, layout
    assert seen["plots"][0]["title"].startswith("PSNR and SQNR per layer")


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 1920])
def test_compare_html_fits_the_window(tmp_path, width):
    first, second = _tflite_report(seed=1), _tflite_report(seed=2, device="rpi5")
    second["latency"]["speedup"] = 0.36
    targets = [{"label": "local-onnxruntime-CPUExecutionProvider", "device": "local", "status": "ok", "report": first},
               {"label": "rpi5-litert-xnnpack-delegate-4-threads", "device": "rpi5", "status": "ok",
                "report": second, "gates_failed": ["speedup 0.36x < 1.5x"]},
               {"label": "jetson", "device": "jetson", "status": "failed",
                "error": "agent did not answer within 30 s: " + TFLITE.format(i=3)}]
    compare = build_compare(targets, [], "local-onnxruntime-CPUExecutionProvider", Gates(fail_under_speedup=1.5))
    path = write_compare_html(compare, tmp_path / "compare.html")
    assert path.read_text(encoding="utf-8").count("\u2718 int8 slower than float") == 1  # rpi5's 0.36x
    seen = render(path, tmp_path, window=(width, 800))
    assert seen["errors"] == []
    layout = seen["layout"]
    assert layout["scroll_width"] <= layout["client_width"], layout
    assert layout["overflowing"] == [], layout


def test_long_names_are_breakable_text_in_the_page(tmp_path):
    """Without a browser: the name is in the page whole (a copy-paste gives it back), the CSS lets it break."""
    report = _tflite_report()
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    drops = re.search(r'<p class="names"><b>Sudden drops:</b> (.*?)</p>', html, re.S).group(1)
    assert drops.replace(";<wbr>", ";").split(", ") == report["summary"]["drops"]
    assert drops.count("<wbr>") == TFLITE.count(";") * len(report["summary"]["drops"])  # a break after each ';'

    assert re.search(r"p, li, td[^{]*\{ overflow-wrap: anywhere; \}", html)


# ---- 8. a layer's prepared name -----------------------------------------------------------------------------


def test_a_layer_s_prepared_name_is_under_its_name_and_in_its_tooltip(tmp_path):
    report = make_report(n_layers=6)
    layer = report["layers"][2]
    layer.update(name="act", user_node="act", user_op_type="HardSwish", prepared_name="_inlfunc_HardSwish_HS_X")
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert ('<span title="prepared copy: _inlfunc_HardSwish_HS_X">act</span>'
            '<div class="sub">prepared: _inlfunc_HardSwish_HS_X</div>') in html
    assert html.count('class="sub">prepared:') == 1  # layers without one show their name alone


# ---- 6. histograms of small tensors -------------------------------------------------------------------------


def _hist(values: np.ndarray, bins: int = 64, lo: float = -1.0, hi: float = 1.0) -> dict:
    edges = np.linspace(lo, hi, bins + 1)
    inside = np.histogram(values[(values >= lo) & (values <= hi)], edges)[0]
    counts = [int((values < lo).sum()), *inside.tolist(), int((values > hi).sum())]
    return {"range": [lo, hi], "float": counts, "int8": counts}


def test_a_small_tensor_s_histogram_has_sqrt_n_bars_holding_every_count():
    values = np.array([-0.9, -0.5, -0.45, 0.0, 0.1, 0.12, 0.6, 1.5])  # 8 values, one above the range
    hist = histograms.parse(_hist(values))
    assert hist.bins == 64 and hist.values == 8 and histograms.shown_bins(8, 64) == 3
    bars = hist.shown()
    assert len(bars.centres) == 3 and bars.counts["float"] == [3, 3, 1]  # 22, 22 and 20 of the 64 bins
    assert bars.widths == pytest.approx([2 * 22 / 64, 2 * 22 / 64, 2 * 20 / 64])
    assert bars.centres[0] - bars.widths[0] / 2 == pytest.approx(-1.0)
    assert bars.centres[-1] + bars.widths[-1] / 2 == pytest.approx(1.0)
    large = histograms.parse(_hist(np.random.default_rng(0).uniform(-1, 1, 5000)))
    assert len(large.shown().centres) == 64 and large.shown().counts["float"] == large.counts["float"]
    assert histograms.shown_bins(0, 64) == 1 and histograms.shown_bins(4000, 64) == 64


def test_the_figure_of_a_small_tensor_draws_its_merged_bars_and_says_so():
    report = make_report(n_layers=10)
    worst = report["summary"]["worst_layers"][0]
    small = next(layer for layer in report["layers"] if layer["name"] == worst)
    small["histogram"] = _hist(np.linspace(-0.8, 0.8, 8))
    rows, _ = histograms.panels(report)
    fig = histograms.figure(rows)
    bars = [trace for trace in fig.data if trace.name == "float" and trace.xaxis == "x"]
    assert len(bars) == 1 and len(bars[0].x) == 3 and sum(bars[0].y) == 8
    assert "8 values in 3 bins" in fig.layout.annotations[0].text


# ---- 9. the terminal: index and middle-cut names everywhere a layer is named -----------------------------------


def test_the_terminal_names_long_layers_by_index_and_a_middle_cut_name():
    report = _tflite_report()
    report["settings"]["drop_db"] = 6.0
    nonfinite = report["layers"][25]
    nonfinite.update(nonfinite={"float_nan": 0, "float_inf": 0, "int8_nan": 12, "int8_inf": 0}, psnr_db=None)
    report["summary"]["nonfinite_layers"] = [nonfinite["name"]]
    console = Console(record=True, width=120)
    render_report(report, console)
    text = console.export_text()
    for name in report["summary"]["drops"] + [nonfinite["name"]]:
        layer = next(x for x in report["layers"] if x["name"] == name)
        assert f"#{layer['index']} {short_name(name)} (" in text
    assert TFLITE.format(i=17) not in text  # no full name spills over lines
    assert max(map(len, text.splitlines())) <= 120


def test_compare_s_terminal_table_cuts_the_worst_layer_in_the_middle():
    first = _tflite_report(seed=1)
    doc = build_compare([{"label": "local", "device": "local", "status": "ok", "report": first}], [], "local",
                        Gates())
    console = Console(record=True, width=200)
    render_compare(doc, console)
    text = console.export_text()
    worst = first["summary"]["worst_layers"][0]
    assert short_name(worst) in text and len(short_name(worst)) == NAME_WIDTH and worst not in text


# ---- 10. capture fidelity counts a NaN on one side as a departure ------------------------------------------------


def test_max_abs_diff_counts_nan_or_inf_on_one_side_only():
    ref = {"y": np.array([1.0, np.nan, np.inf, 2.0], dtype=np.float32)}
    assert _max_abs_diff(ref, {"y": ref["y"].copy()}) == 0.0  # NaN against NaN, inf against inf: the same
    assert _max_abs_diff(ref, {"y": np.array([1.0, np.nan, np.inf, 2.5], np.float32)}) == 0.5
    for got in ([1.0, 0.0, np.inf, 2.0], [np.nan, np.nan, np.inf, 2.0], [1.0, np.nan, -np.inf, 2.0],
                [1.0, np.nan, 3.0, 2.0]):
        assert _max_abs_diff(ref, {"y": np.array(got, np.float32)}) == NONFINITE_DIFF, got
    assert NONFINITE_DIFF == fidelity.NONFINITE_DIFF  # the agent's convention, read back by the host


def test_a_non_finite_fidelity_is_said_in_words(tmp_path):
    report = make_report(n_layers=6)
    report["capture"] = {"passes": 1, "passes_planned": 1, "fidelity_max_abs_diff": fidelity.NONFINITE_DIFF}
    [line] = fidelity.capture_warnings(report)
    assert line.startswith("capture fidelity non-finite: ") and "e+308" not in line
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "capture fidelity non-finite" in html[: html.index('<div class="cards">')]
