"""One more board for a `tag:` job whose board failed under it.

A job on a board chosen by tags that fails because of the board (the agent could not be deployed
or started on it, the agent died, the SSH connection was lost: :attr:`LabTransport.infrastructure_failure`)
runs once more, from the start, on another place with the same tags; the place that failed is kept
locked until the retry has its own, so that the reservation gives another. A job that fails on a
healthy board (the model, its runtime, its data) is never retried: another board would fail it the
same way. A named place has no other board, and an interrupted job is not retried.
The retried job's report says so in its notes and in its transport label, and the terminal says
it when the retry starts.
"""

from __future__ import annotations

from typing import Optional

from ..run_state import INTERRUPTED, RunState
from .coordinator import connect
from .lease import HEALTH_TAG
from .transport import LabTransport


def another_board(transport: LabTransport, state: RunState) -> Optional[tuple[LabTransport, str]]:
    """After an infrastructure failure of a `tag:` job: a transport to another place with the same
    tags, not started, and why the first failed; None when the job is not to be retried (its note
    says so when no other place has the tags)."""
    failure = _infrastructure_failure(transport, state)
    if failure is None:
        return None
    failed = transport.place
    why = f"{state.error['stage']} failed on labgrid place {failed}: {failure}"
    others = [p.name for p in connect(transport.address).places().values()
              if p.name != failed and p.tags.get(HEALTH_TAG) != "bad"
              and all(p.tags.get(k) == v for k, v in transport.device.select.items())]
    if not others:
        transport.notify(f"{why}; not retried: no other place has the tags {_tags(transport)}")
        state.notes.append(f"infrastructure failure not retried: {why}; no other place has the tags")
        return None
    transport.notify(f"{why}; retrying once on another place with {_tags(transport)}")
    again = LabTransport(transport.device, transport.options, transport.accept_new_host, transport.notify,
                         avoid=frozenset({failed}))
    again.label_suffix = f"; retried after an infrastructure failure on {failed}"
    return again, why


def _infrastructure_failure(transport: LabTransport, state: RunState) -> Optional[str]:
    """Why a `tag:` job's board failed under it, when the job failed because of the board; else None."""
    if not transport.device.select or transport.place is None:
        return None
    if not state.error or state.error.get("code") == INTERRUPTED:
        return None
    return transport.infrastructure_failure


def _tags(transport: LabTransport) -> str:
    return ",".join(f"{k}={v}" for k, v in transport.device.select.items())
