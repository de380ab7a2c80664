"""Quarantine, kept in the coordinator: no second store, every controller sees the same state.

A failed health check adds one to the place's ``qbench-fails`` tag; a passed one clears it. At
``quarantine_after`` consecutive failures (default 3) the place gets ``qbench-health=bad`` and the
last reason in its comment (``qbench: quarantined ...``). `tag:` selection asks for
``qbench-health=ok``, so a quarantined place is never picked; naming it is refused with the reason.
``qbench lab unquarantine PLACE`` puts it back.
"""

from __future__ import annotations

import datetime

from .coordinator import Coordinator
from .lease import FAILS_TAG, HEALTH_TAG

COMMENT_PREFIX = "qbench: quarantined"


def record_failure(coordinator: Coordinator, place: str, reason: str, quarantine_after: int) -> tuple[int, bool]:
    """Count one failed health check; quarantine at ``quarantine_after``. Returns (failures, quarantined)."""
    info = coordinator.place(place)
    failures = _count(info.tags.get(FAILS_TAG)) + 1
    tags = {FAILS_TAG: str(failures)}
    quarantined = failures >= quarantine_after
    if quarantined:
        tags[HEALTH_TAG] = "bad"
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        coordinator.set_comment(place, f"{COMMENT_PREFIX} {when} after {failures} failed health checks: {reason}")
    coordinator.set_tags(place, tags)
    return failures, quarantined


def record_success(coordinator: Coordinator, place: str) -> None:
    """A passed health check: the failure count starts again from zero."""
    info = coordinator.place(place)
    if info.tags.get(FAILS_TAG) or info.tags.get(HEALTH_TAG) != "ok":
        coordinator.set_tags(place, {FAILS_TAG: "", HEALTH_TAG: "ok"})


def unquarantine(coordinator: Coordinator, place: str) -> bool:
    """Put a place back into service; True if it was quarantined."""
    info = coordinator.place(place)
    was = info.tags.get(HEALTH_TAG) == "bad"
    coordinator.set_tags(place, {FAILS_TAG: "", HEALTH_TAG: "ok"})
    if info.comment.startswith(COMMENT_PREFIX):
        coordinator.set_comment(place, "")
    return was


def _count(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0
