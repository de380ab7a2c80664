"""qbench: float vs int8 model diagnostics measured on the device.

The Python API (the ``qbench`` commands of the same names; see :mod:`qbench.host.api`)::

    import qbench

    report = qbench.run("model.onnx", runs=50)
    print(report.summary.output_psnr_db, report.latency.speedup)

Importing qbench imports nothing of the host: an agent process, which imports this package before
``qbench.agent``, stays free of it. ONNX Runtime, plotly, paramiko and ZeroMQ are imported when a
function or class below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    "__version__": "qbench.host",
    "run": "qbench.host.api", "compare": "qbench.host.api", "calibrate": "qbench.host.api", "fix": "qbench.host.api",
    "Report": "qbench.host.report.typed", "Comparison": "qbench.host.report.typed",
    "Output": "qbench.host.report.typed", "Layer": "qbench.host.report.typed",
    "Latency": "qbench.host.report.typed", "Timing": "qbench.host.report.typed",
    "Memory": "qbench.host.report.typed", "PeakMemory": "qbench.host.report.typed",
    "Summary": "qbench.host.report.typed",
    "UserError": "qbench.host.errors", "RunFailed": "qbench.host.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from qbench.host.api import calibrate, compare, fix, run
    from qbench.host.errors import RunFailed, UserError
    from qbench.host.report.typed import (Comparison, Latency, Layer, Memory, Output, PeakMemory, Report, Summary,
                                          Timing)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
