"""The ``qbench`` command: one typer app, one module per command group.

Exit codes: 0 ok, 1 error (bad input, device unreachable, a failed stage),
2 usage, 3 ran fine but failed a gate (see ``qbench.host.gates``).
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import UserError

#: set by ``--debug`` anywhere on the command line: tracebacks and the runtimes' own logs are shown
DEBUG = False

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Float vs int8 diagnostics measured on the device.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def agent(ctx: typer.Context) -> None:
    """Run the agent on this machine (same options as `python -m qbench.agent --help`)."""
    # The host never imports the agent: it becomes the agent process.
    os.execv(sys.executable, [sys.executable, "-m", "qbench.agent", *ctx.args])


def _register() -> None:
    # Each module adds its commands to `app` when imported; imported here, not at the top,
    # because they import `app` from this module.
    from . import calibrate, compare, devices, emulate, fix, results, run  # noqa: F401


def main() -> None:
    """Console entry point: user errors become one line on stderr (``--debug`` for the traceback)."""
    global DEBUG
    debug = DEBUG = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    _register()
    try:
        app()
    except UserError as exc:
        if debug:
            raise
        print(f"qbench: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("qbench: interrupted", file=sys.stderr)
        sys.exit(130)
