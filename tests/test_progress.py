"""The progress a real run reports (real agent process, ZeroMQ, ONNX Runtime), and how the terminal shows it.

Every bar knows its total from its first report or says it has none (total 0) all along; its count
never passes the total nor goes back; its label does not repeat its stage (``upload (upload)``).
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from models import build_convnet
from qbench.host import session
from qbench.host.cli.bars import bar_label
from qbench.host.cli.render import RichUI
from qbench.host.cli.render_compare import CompareUI, progress_display
from qbench.host.session import UI, RunSettings
from qbench.protocols.messages import TimingConfig
from qbench.host.transport.local import LocalTransport

PROFILE_RUNS = 3


class Recorder(UI):
    """Every call a run makes, in order: ("stage", name) and ("progress", stage, step, done, total)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._stage = ""

    def stage(self, name: str) -> None:
        self._stage = name
        self.calls.append(("stage", name))

    def progress(self, stage: str, done: int, total: int) -> None:
        self.calls.append(("progress", self._stage, stage, done, total))

    def bars(self) -> dict[tuple[str, str], list[tuple[int, int]]]:
        """(stage, step) -> its (done, total) reports."""
        found: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for _, stage, step, done, total in (c for c in self.calls if c[0] == "progress"):
            found.setdefault((stage, step), []).append((done, total))
        return found


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    model = build_convnet(tmp / "convnet.onnx")
    ui = Recorder()
    # a fresh agent cache, so both models are sent; a 1-byte budget, so the capture takes a pass per layer
    settings = RunSettings(model=model, out_dir=tmp / "out", samples=2, profile_runs=PROFILE_RUNS,
                           timing=TimingConfig(warmup=1, runs=4, min_seconds=0.0), memory_budget_mb=1 / 2**20)
    state = session.run(settings, LocalTransport(cache_dir=str(tmp / "cache")), ui)
    assert state.error is None, state.error
    return state, ui


def test_every_bar_knows_its_total_from_the_start_and_only_moves_forward(recorded):
    state, ui = recorded
    bars = ui.bars()
    assert {("upload", "upload"), ("timing float", "timing"), ("timing float", "profile"), ("timing int8", "timing"),
            ("timing int8", "profile"), ("capture", "capture")} <= set(bars), sorted(bars)
    for (stage, step), reports in bars.items():
        totals = {total for _, total in reports}
        assert len(totals) == 1, (stage, step, reports)  # known from the first report, or 0 (unknown) throughout
        dones = [done for done, _ in reports]
        assert dones == sorted(dones), (stage, step, reports)
        if step:
            assert 0 < max(dones) <= reports[0][1], (stage, step, reports)
        words = bar_label(stage, step).replace(":", " ").split()
        assert len(words) == len(set(words)), (stage, step)
    assert bars[("upload", "upload")][0] == (0, state.float_info.size_bytes + state.int8_info.size_bytes)
    assert bars[("upload", "upload")][-1][0] == state.float_info.size_bytes + state.int8_info.size_bytes
    # the profile bar moves with each profiled run, not only at its end
    for kind in ("float", "int8"):
        assert sorted({done for done, _ in bars[(f"timing {kind}", "profile")]}) == list(range(PROFILE_RUNS + 1))
    # the capture counts layers, whose number is known before the first pass (passes may be split)
    capture = bars[("capture", "capture")]
    assert capture[0] == (0, len(state.matching.pairs())) and capture[-1][0] == capture[-1][1]
    assert len(state.capture.groups) > 1 and len(capture) > 2


def _replay(calls: list[tuple], ui: UI, draw=lambda: None) -> None:
    """The recorded calls into ``ui``; ``draw`` after each progress (a display draws itself only 10 times a second)."""
    for call in calls:
        if call[0] == "stage":
            ui.stage(call[1])
        else:
            ui.progress(*call[2:])
            draw()


def _shown(out: io.StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())


def test_the_terminal_shows_no_unknown_count_and_no_repeated_label(recorded):
    _, ui = recorded
    out = io.StringIO()
    rich = RichUI(Console(file=out, force_terminal=True, width=120), quiet=False)
    _replay(ui.calls, rich)  # each stage's bar is drawn as it was last when the next stage closes it
    rich.close()
    shown = _shown(out)
    for stage in ("prepare", "quantize", "connect", "upload", "timing float", "capture"):
        assert stage in shown
    assert "/?" not in shown and "(upload)" not in shown and "upload: upload" not in shown
    assert "timing float: profile" in shown and " MB" in shown and " layers" in shown


def test_compare_shows_each_target_as_run_does(recorded):
    _, ui = recorded
    out = io.StringIO()
    display = progress_display(Console(file=out, force_terminal=True, width=120), quiet=False)
    target = CompareUI(display.console, False, display, "pi:xnnpack")
    display.start()
    _replay(ui.calls, target, display.refresh)
    display.stop()
    shown = _shown(out)
    assert "pi:xnnpack: timing int8: profile" in shown and "pi:xnnpack: capture " in shown
    assert "/?" not in shown and "upload: upload" not in shown
