"""Long layer names (TFLite's `;`-joined ones) are cut in the middle, beside the layer index."""

from __future__ import annotations

from rich.console import Console

from qbench.host.cli.render import NAME_WIDTH, render_report, short_name


def test_short_name_keeps_both_ends_within_the_width():
    name = "model/backbone/stage3/block7/conv2d;model/backbone/stage3/block7/bn/FusedBatchNormV3;relu6"
    cut = short_name(name)
    assert len(cut) == NAME_WIDTH and "…" in cut
    assert name.startswith(cut.split("…")[0]) and name.endswith(cut.split("…")[1])
    assert short_name("conv1") == "conv1"


def test_layers_that_differ_only_inside_their_names_stay_apart_on_the_terminal():
    names = [f"p2o.pd_op.batch_norm_.{i}.0;model/very/long/shared/scope/name/that/repeats;out{i}" for i in (3, 17)]
    layers = [{"index": i, "name": n, "op_type": "Conv", "psnr_db": 20.0 + i, "local_psnr_db": 50.0, "sqnr_db": 10.0}
              for i, n in zip((3, 17), names)]
    report = {"device": {"name": "local"}, "settings": {"worst": 5, "drop_db": 6.0}, "outputs": [], "layers": layers,
              "summary": {"worst_layers": names},
              "sensitive_layers": [{"name": n, "op_type": "Conv", "psnr_db": 20.0, "sqnr_db": 10.0, "score": 5.0,
                                    "reasons": ["drop"]} for n in names]}
    console = Console(record=True, width=160)
    render_report(report, console)
    text = console.export_text()
    for name in names:
        assert text.count(short_name(name)) == 2  # worst layers and sensitive layers, one line each
    assert short_name(names[0]) != short_name(names[1])
