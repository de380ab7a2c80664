"""What the measuring commands share on the command line: ``--device`` and adding :class:`RunOptions`.

Both commands measure the same float/int8 pair the same way; they differ only in how many targets
they measure it on. The options they share are declared once, in
:class:`~qbench.host.run_options.RunOptions`, and :func:`with_run_options` adds them to a command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable

import typer

from ..run_options import DEVICE, RunOptions


def device_option() -> Any:
    """The ``--device`` option of a command that measures on one device."""
    return typer.Option("local", "--device", "-d", rich_help_panel=DEVICE,
                        help="device name from devices.yaml; `local` needs none")


def with_run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every :class:`RunOptions` field to ``command``'s options; it receives them as ``opts``.

    typer reads a command's options from its signature, so the wrapper's signature is the
    command's own parameters (without ``opts``) followed by the shared ones.
    """
    hints = typing.get_type_hints(RunOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=f.default_factory() if f.default_factory is not dataclasses.MISSING
                                else f.default)
              for f in dataclasses.fields(RunOptions)]
    own = inspect.signature(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        opts = RunOptions(**{p.name: kwargs.pop(p.name) for p in shared})
        return command(opts=opts, **kwargs)

    wrapper.__signature__ = own.replace(  # type: ignore[attr-defined]
        parameters=[*(p for p in own.parameters.values() if p.name != "opts"), *shared])
    return wrapper
