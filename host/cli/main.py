"""The ``qbench`` command: one typer app, one module per command group.

Exit codes: 0 ok, 1 error (bad input, device unreachable, a failed stage),
2 usage, 3 ran fine but failed a gate (see ``qbench.host.gates``), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

import typer

from ..errors import UserError

#: the exit status of a command the user interrupted (Ctrl-C), as a shell reports SIGINT
INTERRUPTED_EXIT = 130

#: set by ``--debug`` anywhere on the command line: tracebacks and the runtimes' own logs are shown
DEBUG = False

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Float vs int8 diagnostics measured on the device.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def agent(ctx: typer.Context) -> None:
    """Run the agent on this machine (same options as `python -m qbench.agent --help`)."""
    # The host never imports the agent: it becomes the agent process.
    os.execv(sys.executable, [sys.executable, "-m", "qbench.agent", *ctx.args])


#: command -> the modules that add it to `app` when imported. Only the invoked command's module is
#: imported: the others pull in heavy libraries (onnxruntime.quantization, paramiko, plotly) that
#: would delay `qbench run` and its agent's start. Help and unknown names import them all.
COMMANDS: dict[str, tuple[str, ...]] = {
    "agent": (), "calibrate": ("calibrate",), "compare": ("compare",), "deploy": ("devices",),
    "devices": ("devices",), "emulate": ("emulate",), "fix": ("fix",), "history": ("results",),
    "diff": ("results",), "view": ("results",), "run": ("run",), "lab": ("lab",),
    "sensitivity": ("sensitivity",),
}


def _print_version(value: bool) -> None:
    if value:
        from qbench.host import __version__
        from qbench.protocols.version import PROTOCOL_VERSION

        print(f"qbench {__version__} (protocol {PROTOCOL_VERSION})")
        raise typer.Exit()


@app.callback()
def _group(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print qbench's version and protocol version, then exit."),
    debug: bool = typer.Option(False, "--debug", help="Full tracebacks instead of one-line errors "
                               "(accepted anywhere on the command line)."),
) -> None:
    # A callback keeps `app` a command group when only `agent` is registered (typer turns a
    # one-command app into that command). `--debug` is taken out of argv by main(); it is declared
    # here so that help shows it.
    pass


def _register(args: list[str]) -> None:
    """Import the modules of the command ``args`` names; modules import `app` from here, hence not at the top."""
    modules = COMMANDS.get(args[0]) if args else None
    if modules is None:
        modules = tuple(dict.fromkeys(m for ms in COMMANDS.values() for m in ms))
    for module in modules:
        importlib.import_module(f"{__package__}.{module}")


def main() -> None:
    """Console entry point: user errors become one line on stderr (``--debug`` for the traceback)."""
    global DEBUG
    debug = DEBUG = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    _register(sys.argv[1:])
    try:
        app()
    except UserError as exc:
        if debug:
            raise
        print(f"qbench: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("qbench: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
    finally:
        # The process ends here: its objects need no collection on the way out (a run's models, report and
        # plotly's figures took the interpreter 0.1 s to collect one by one). Exit handlers still run.
        gc.freeze()
