"""Command modules are imported on demand (cli/main.COMMANDS); help still shows every command and option."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from cli import qbench
from qbench.host.cli import main as cli_main

WIDE = {"COLUMNS": "200"}  # one line per command in rich's help panels


def _listed(help_text: str) -> set[str]:
    return set(re.findall(r"^│ ([a-z][a-z0-9-]*) ", help_text, re.MULTILINE))


def test_every_command_module_registers_exactly_its_commands():
    for module in {m for modules in cli_main.COMMANDS.values() for m in modules}:
        importlib.import_module(f"qbench.host.cli.{module}")
    app = cli_main.app
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    registered |= {g.name for g in app.registered_groups}
    assert registered == set(cli_main.COMMANDS)


def test_top_level_help_lists_every_command(tmp_path):
    result = qbench("--help", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert _listed(result.stdout) == set(cli_main.COMMANDS)


@pytest.mark.parametrize("command, options", [
    (["run"], ["--int8", "--device", "--data", "--threads", "--db"]),
    (["devices", "check"], ["--accept-new-host"]),
    (["history"], ["--model", "--limit", "--json"]),
])
def test_command_help_shows_its_options(tmp_path, command, options):
    result = qbench(*command, "--help", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert f"{' '.join(command)} [OPTIONS]" in result.stdout  # the usage line (prog name is -c here)
    for option in options:
        assert option in result.stdout


def test_agent_alone_still_runs_the_agent(tmp_path):
    # only `agent` is registered then: the app must stay a command group
    result = qbench("agent", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: qbench agent" in result.stdout and "--bind" in result.stdout


def test_unknown_command_suggests_the_close_one(tmp_path):
    result = qbench("rn", cwd=tmp_path, env=WIDE)
    assert result.returncode == 2
    assert "Did you mean 'run'?" in result.stderr


def test_run_imports_neither_the_other_commands_nor_plotly(tmp_path):
    code = ("import sys\nfrom qbench.host.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('qbench.host.cli.', 'plotly', 'paramiko'))))")
    result = subprocess.run([sys.executable, "-c", code, "run", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().splitlines()[-1]
    assert "'qbench.host.cli.run'" in loaded
    for absent in ("qbench.host.cli.calibrate", "qbench.host.cli.compare", "qbench.host.cli.devices",
                   "qbench.host.cli.fix", "'plotly", "'paramiko"):
        assert absent not in loaded


def test_version_prints_package_and_protocol(tmp_path):
    from qbench.host import __version__
    from qbench.protocols.version import PROTOCOL_VERSION

    result = qbench("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"qbench {__version__} (protocol {PROTOCOL_VERSION})"


def test_debug_is_listed_in_top_level_help(tmp_path):
    result = qbench("--help", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert "--debug" in result.stdout and "--version" in result.stdout


def _panels(help_text: str) -> dict[str, list[str]]:
    """Panel title -> the options listed in it, from rich's help boxes."""
    panels: dict[str, list[str]] = {}
    title = None
    for line in help_text.splitlines():
        opened = re.match(r"^╭─ (.+?) ─", line)
        if opened:
            title = opened.group(1)
            panels[title] = []
        elif title is not None:
            panels[title] += re.findall(r"^│ (?:\*\s+)?(--[a-z0-9-]+)", line)
    return panels


@pytest.mark.parametrize("command", ["run", "compare"])
def test_measuring_commands_group_their_options_in_panels(tmp_path, command):
    result = qbench(command, "--help", cwd=tmp_path, env=WIDE)
    assert result.returncode == 0, result.stderr
    panels = _panels(result.stdout)
    for title in ("Inputs", "Quantization", "Timing", "Capture (per-layer analysis)", "Output",
                  "Gates (exit 3 when one fails)", "Device and runtime"):
        assert panels.get(title), (title, sorted(panels))
    assert panels["Options"] == ["--help"]  # no option left outside a panel
    assert "--device" in panels["Device and runtime"] and "--fail-under-psnr" in panels["Gates (exit 3 when one fails)"]
    assert "--calibration" in panels["Inputs"] and "--runs" in panels["Timing"]
