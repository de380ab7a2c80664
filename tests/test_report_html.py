"""report.html and compare.html, rendered by a real headless Chromium (Debian's `chromium`).

A probe script is put at the top of a copy of the page, before plotly.js runs:
it records uncaught errors and console.error calls, then, after load, writes
what rendered into the DOM, which `chromium --dump-dom` hands back.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest

from qbench.host.report import histograms
from qbench.host.report.exports import write_layers_csv, write_model_explorer_overlay
from qbench.host.gates import Gates
from qbench.host.report.compare import build_compare
from qbench.host.compare.sensitivity import rank_sensitive
from qbench.host.report.html import write_compare_html, write_html
from reportdata import make_report

CHROMIUM = shutil.which("chromium")

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { window.__errors.push("rejection: " + e.reason); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  setTimeout(function () {
    var result = {
      divs: document.querySelectorAll(".plotly-graph-div").length,
      plotted: document.querySelectorAll(".js-plotly-plot").length,
      svgs: document.querySelectorAll(".js-plotly-plot .main-svg").length,
      traces: document.querySelectorAll(".js-plotly-plot .trace").length,
      titles: Array.prototype.map.call(document.querySelectorAll(".js-plotly-plot .gtitle"),
                                       function (t) { return t.textContent; }),
      notes: Array.prototype.map.call(document.querySelectorAll("p.note"), function (n) { return n.textContent; }),
    };
    var header = Array.prototype.filter.call(document.querySelectorAll("table.sortable th"),
                                             function (th) { return th.textContent === "PSNR dB"; })[0];
    if (header) {
      var table = header.closest("table");
      header.click();
      result.first_after_sort = table.tBodies[0].rows[0].cells[1].textContent;
      header.click();
      result.first_after_reverse = table.tBodies[0].rows[0].cells[1].textContent;
    }
    result.plots = Array.prototype.map.call(document.querySelectorAll(".js-plotly-plot"), function (gd) {
      return {title: (gd.layout.title && gd.layout.title.text) || "", traces: gd.data.length,
              bars: gd.querySelectorAll(".barlayer .point").length,
              // [axis, label, font px] of every drawn tick label ("xtick", "x2tick", ...)
              ticks: Array.prototype.map.call(
                gd.querySelectorAll(".xaxislayer-above text, .yaxislayer-above text"), function (t) {
                  return [t.parentNode.getAttribute("class"), t.textContent, parseFloat(getComputedStyle(t).fontSize)];
                }),
              subplots: Object.keys(gd._fullLayout._plots || {}).length,
              buttons: Array.prototype.map.call(gd.querySelectorAll(".updatemenu-button"),
                                                function (b) { return b.textContent; })};
    });
    // Press every "log y" button the way a user does, then read the axis types back.
    var pressed = [];
    document.querySelectorAll(".js-plotly-plot").forEach(function (gd) {
      gd.querySelectorAll(".updatemenu-button").forEach(function (button) {
        if (button.textContent === "log y") {
          button.dispatchEvent(new MouseEvent("click", {bubbles: true}));
          pressed.push(gd);
        }
      });
    });
    setTimeout(function () {
      result.log_axes = pressed.map(function (gd) {
        return Object.keys(gd._fullLayout).filter(function (k) { return /^yaxis\d*$/.test(k); })
          .map(function (k) { return gd._fullLayout[k].type; });
      });
      result.errors = window.__errors;
      // Layout: a page wider than the window scrolls sideways; name what sticks out.
      var root = document.documentElement;
      result.layout = {scroll_width: root.scrollWidth, client_width: root.clientWidth,
                       inner_height: window.innerHeight,
                       first_plot_top: (function () {
                         var gd = document.querySelector(".js-plotly-plot");
                         return gd ? gd.getBoundingClientRect().top + window.scrollY : null; })(),
                       overflowing: Array.prototype.filter.call(document.body.querySelectorAll("*"), function (el) {
                         return el.getBoundingClientRect().right > root.clientWidth + 0.5
                                && !el.closest(".table-wrap, .js-plotly-plot");
                       }).slice(0, 5).map(function (el) { return el.tagName + "." + el.className; })};
      var out = document.createElement("pre");
      out.id = "probe";
      out.textContent = JSON.stringify(result);
      document.body.appendChild(out);
    }, 300);
  }, 500);
});
</script>"""


def render(html_path, tmp_path, window: tuple[int, int] = (1280, 800)) -> dict:
    """Load a page in headless Chromium in a ``window`` (width, height) px and return what the probe saw."""
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    probed = tmp_path / f"probed-{html_path.name}"
    probed.write_text(html_path.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
        f"--window-size={window[0]},{window[1]}",
        # Any network fetch fails: the page must not need one.
        "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", probed.as_uri(),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the probe never reported; chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


def assert_self_contained(html: str) -> None:
    assert not re.search(r"<script[^>]+src=", html)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html, flags=re.S)
    assert "<link" not in markup and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)
    # plotly.js is inlined once, however many figures the page has.
    bundles = re.findall(r"<script[^>]*>(.{1000000,}?)</script>", html, flags=re.S)
    assert len(bundles) == 1 and "plotly" in bundles[0][:2000].lower()
    assert html.count("Plotly.newPlot(") >= 4


@pytest.mark.browser
def test_report_renders_every_chart_without_errors(tmp_path):
    report = make_report(n_layers=50, gates={"fail_under_psnr": 30.0, "fail_on_drop": True})
    path = write_html(report, tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html)
    seen = render(path, tmp_path)
    assert seen["errors"] == []
    assert seen["divs"] == 4 and seen["plotted"] == 4, seen
    assert seen["svgs"] >= 4 and seen["traces"] >= 8
    assert any("PSNR and SQNR per layer" in title for title in seen["titles"])
    assert any("Latency" in title for title in seen["titles"])
    ops = _plot(seen, "by op type")
    op_types = {e["op_type"] for model in ("float", "int8") for e in report["profile"][model]}
    assert ops["traces"] == 2 and ops["bars"] == 2 * len(op_types)  # float and int8, one bar per op type each
    hists = _plot(seen, "Value histograms")
    worst = report["summary"]["worst_layers"]
    with_weights = {w["layer"] for w in report["weights"]} & set(worst)
    assert hists["subplots"] == len(worst) + len(with_weights)
    assert hists["buttons"] == ["linear y", "log y"]
    assert seen["log_axes"] and all(set(axes) == {"log"} for axes in seen["log_axes"])
    finite = [layer for layer in report["layers"] if layer["psnr_db"] is not None]
    assert seen["first_after_sort"] == min(finite, key=lambda layer: layer["psnr_db"])["name"]
    exact = [layer["name"] for layer in report["layers"] if layer["psnr_db"] is None]
    assert seen["first_after_reverse"] in exact
    # Gate marks against the thresholds stored in the report.
    assert "gates failed" in html and "fail_on_drop" in html


def _plot(seen: dict, title: str) -> dict:
    matches = [plot for plot in seen["plots"] if title in plot["title"]]
    assert len(matches) == 1, (title, [plot["title"] for plot in seen["plots"]])
    return matches[0]


@pytest.mark.browser
def test_report_without_optional_sections_says_so(tmp_path):
    report = make_report(n_layers=20, profile=False, histograms=False)
    path = write_html(report, tmp_path / "report.html")
    seen = render(path, tmp_path)
    assert seen["errors"] == []
    assert seen["divs"] == seen["plotted"] == 2
    assert any("profiling was not collected" in text for text in seen["notes"])
    assert any("Histograms were not collected" in text for text in seen["notes"])


@pytest.mark.browser
def test_compare_renders_one_chart_per_figure(tmp_path):
    first, second = make_report(seed=1), make_report(seed=2, device="rpi5")
    targets = [{"label": "local", "device": "local", "status": "ok", "report": first},
               {"label": "rpi5", "device": "rpi5", "status": "ok", "report": second,
                "gates_failed": ["speedup 1.20x < 1.5x"]},
               {"label": "jetson", "device": "jetson", "status": "failed", "error": "agent did not answer within 30 s"}]
    cross = [{"target": "rpi5", "model": "int8", "output": "logits", "kind": "float", "psnr_db": 41.5, "exact": False},
             {"target": "rpi5", "model": "int8", "output": "class_id", "kind": "exact", "psnr_db": None,
              "exact": False, "mismatches": 3},
             {"target": "rpi5", "model": "float", "output": "logits", "kind": "float", "psnr_db": None, "exact": True}]
    compare = build_compare(targets, cross, "local", Gates(fail_under_speedup=1.5))
    path = write_compare_html(compare, tmp_path / "compare.html")
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "agent did not answer within 30 s" in html and "speedup 1.20x &lt; 1.5x" in html
    assert "41.50 dB, 3 mismatches" in html and "identical" in html  # rpi5 against the reference, int8 and float
    seen = render(path, tmp_path)
    assert seen["errors"] == []
    assert seen["divs"] == seen["plotted"] == 6, seen
    psnr_title = next(title for title in seen["titles"] if "PSNR per layer" in title)
    assert "per target" in psnr_title
    assert any("Output PSNR" in title for title in seen["titles"])
    assert any("reference target" in title for title in seen["titles"])


def test_names_with_markup_are_escaped(tmp_path):
    report = make_report(n_layers=5)
    report["layers"][1]["name"] = "</script><img src=x onerror=alert(1)>"
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in html
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.browser
def test_probe_catches_page_errors(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><div class='plotly-graph-div'></div>"
                    "<script>console.error('boom'); notAFunction();</script></body></html>")
    seen = render(page, tmp_path)
    assert seen["divs"] == 1 and seen["plotted"] == 0
    assert any("boom" in error for error in seen["errors"])
    assert any("notAFunction" in error for error in seen["errors"])


def test_partial_report_of_a_failed_run_still_renders(tmp_path):
    full = make_report()
    partial = {key: full[key] for key in ("schema", "created", "qbench_version", "device", "models", "settings")}
    partial.update(status="failed", error={"stage": "capture", "message": "worker killed (out of memory)"},
                   notes=["calibrated on random data"])
    html = write_html(partial, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "capture failed: worker killed (out of memory)" in html
    assert "calibrated on random data" in html
    assert "No layer figures in this report." in html and "No latency samples in this report." in html


def test_a_runtime_without_op_profiler_is_explained(tmp_path):
    report = make_report(n_layers=10)
    why = "LiteRT's Python API exposes no op profiler"
    report["profile"] = {"float": [], "int8": [], "runs": 10, "notes": {"float": why, "int8": why}}
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No per-operator profile." in html and html.count(why.replace("'", "&#x27;")) == 2
    assert "by op type" not in html


def test_histograms_of_worst_layers_skip_missing_and_malformed_data(tmp_path):
    report = make_report(n_layers=30)
    layers = {layer["name"]: layer for layer in report["layers"]}
    first, second, third, *rest = report["summary"]["worst_layers"]
    del layers[first]["histogram"]
    layers[second]["histogram"]["range"] = [1.0, 1.0]  # empty range
    report["weights"] = [w for w in report["weights"] if w["layer"] not in (first, second)]
    rows, missing = histograms.panels(report)
    assert missing == [first, second] and [name for name, _, _ in rows] == [third, *rest]
    for malformed in ({"range": [0, 1], "float": [1, float("nan"), 2]}, {"range": [0, 1], "float": [1, 2]},
                      {"range": [0, 1], "float": [0, 1, 2, 3], "int8": [0, 1, 2]}, {"range": [0], "float": [1, 2, 3]},
                      "not a histogram", None):
        assert histograms.parse(malformed) is None
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"No histogram for: {first}, {second}" in html
    # The clipped counts in the table are the under/overflow ends of the report's own counts.
    counts = layers[third]["histogram"]["float"]
    total = sum(counts)
    assert f"{counts[0]} below, {counts[-1]} above ({100 * (counts[0] + counts[-1]) / total:.2g} % clipped)" in html


def test_no_worst_layer_with_histograms_says_so(tmp_path):
    report = make_report(n_layers=10, histograms=False)
    report["weights"] = [{"name": "w", "layer": "not a worst layer",
                          "histogram": {"range": [0, 1], "float": [0, 1, 0]}}]
    html = write_html(report, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Histograms were not collected for this run." in html and html.count("Plotly.newPlot(") == 3


def test_histograms_leave_layers_csv_and_overlay_untouched(tmp_path):
    with_data = make_report(n_layers=20)
    without = copy.deepcopy(with_data)
    del without["weights"]
    for layer in without["layers"]:
        del layer["histogram"]
    for name, report in (("with", with_data), ("without", without)):
        write_layers_csv(report, tmp_path / f"{name}.csv")
        write_model_explorer_overlay(report, tmp_path / f"{name}.json", model_format="onnx")
    assert (tmp_path / "with.csv").read_bytes() == (tmp_path / "without.csv").read_bytes()
    assert (tmp_path / "with.json").read_bytes() == (tmp_path / "without.json").read_bytes()


@pytest.mark.browser
def test_diagnosis_lists_sensitive_layers_and_draws_equalized_ranges(tmp_path):
    report = make_report(n_layers=30)
    report["sensitive_layers"] = rank_sensitive(report["layers"], report["weights"])
    assert report["sensitive_layers"], "the synthetic layers must rank some layer"
    report["equalization"] = {"pairs": [{"first": "conv1", "second": "conv2"}], "iterations": 3,
                              "channel_ranges_before": {"conv1": [0.01, 1.0, 3.0], "conv2": [2.0, 0.5, 0.02]},
                              "channel_ranges_after": {"conv1": [0.14, 0.7, 0.77], "conv2": [0.14, 0.7, 0.24]}}
    path = write_html(report, tmp_path / "report.html")
    seen = render(path, tmp_path)
    assert seen["errors"] == []
    assert seen["divs"] == 5 and seen["plotted"] == 5, seen
    assert _plot(seen, "Cross-layer equalization")["traces"] == 4  # before and after for each conv
    html = path.read_text(encoding="utf-8")
    first = report["sensitive_layers"][0]
    assert "; ".join(first["reasons"]).replace("&", "&amp;") in html.replace("&#x27;", "'")


def test_a_layer_s_weight_panel_is_its_first_weight_with_a_valid_histogram():
    report = make_report(n_layers=30)
    names = set(report["summary"]["worst_layers"][:histograms.MAX_LAYERS])
    shown = next(w for w in report["weights"] if w["layer"] in names)
    broken = {**copy.deepcopy(shown), "name": "broken", "histogram": {"range": [1.0, 1.0], "float": [0, 1, 0]}}
    second = {**copy.deepcopy(shown), "name": "second"}
    at = report["weights"].index(shown)
    report["weights"][at:at + 1] = [broken, shown, second]
    rows, _ = histograms.panels(report)
    weight_panels = {name: weight for name, _, weight in rows if weight is not None}
    assert weight_panels[shown["layer"]].tensor == shown["name"]
    assert {panel.tensor for panel in weight_panels.values()}.isdisjoint({"broken", "second"})
