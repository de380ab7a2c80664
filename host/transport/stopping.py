"""Stopping an agent off the run's critical path.

Once the capture is in, the host has nothing more to ask the agent, yet the agent takes a
tenth of a second or more to exit (its zygotes unload their runtime, then its own interpreter
winds down). :func:`stop_in_background` lets that happen while the host writes its report.

No agent outlives the host and none is left a zombie: the stopping thread is not a daemon, so
the interpreter joins it (and ``transport.stop()`` reaps the agent) before the process exits;
and a new run first joins every stop still under way (:func:`wait_stopped`), so an agent that
is exiting never overlaps the next run's measurements.
"""

from __future__ import annotations

import logging
import threading

from .base import AgentTransport

log = logging.getLogger("qbench")

_pending: list[threading.Thread] = []
_lock = threading.Lock()


def stop_in_background(transport: AgentTransport) -> None:
    """``transport.stop()`` in a (non-daemon) thread; :func:`wait_stopped` joins it."""
    thread = threading.Thread(target=_stop, args=(transport,), name="qbench-agent-stop")
    with _lock:
        _pending.append(thread)
    thread.start()


def wait_stopped() -> None:
    """Return once every agent stopped by :func:`stop_in_background` is gone (``stop()`` is bounded in time)."""
    with _lock:
        threads, _pending[:] = list(_pending), []
    for thread in threads:
        thread.join()


def _stop(transport: AgentTransport) -> None:
    try:
        transport.stop()
    except Exception as exc:  # noqa: BLE001 - nobody waits for this thread's result: say it, do not raise it
        log.warning("stopping the agent (%s) failed: %s", transport.label, exc)
