"""Device settings a labgrid place's tags give: ``qbench-python=/usr/bin/python3.11`` and the like.

A place's tags say what is on its board, for every controller, so a `tag:` pool can mix boards
whose Python or workdir differ. Only settings about the board's own software are read:

- ``qbench-python``, ``qbench-workdir``, ``qbench-runtime`` (the runtime whose packages the board
  must have), ``qbench-connect-timeout`` (seconds, for a slow board).

Everything else stays in devices.yaml: anyone who can reach a coordinator can set a place's tags
(labgrid has no access control), so a tag must never choose a credential (``key``, ``password_env``:
a tag could make the controller send any of its environment variables as a password to an address
the exporter names), a trust decision (``accept_unknown_host``), where to connect (the
NetworkService says that), or anything run on the controller itself (``transport``, the local
settings). The runner's settings (providers, threads, delegate) are not read either: a run fixes
its runner before a `tag:` selection knows which board it gets.

Precedence: a device's own devices.yaml entry, then the place's tags, then ``labgrid.defaults``,
then qbench's defaults. The tags describe the one board; the defaults are the lab-wide fallback.
"""

from __future__ import annotations

from typing import Any

#: tag -> device setting
SETTINGS = {"qbench-python": "python", "qbench-workdir": "workdir", "qbench-runtime": "runtime",
            "qbench-connect-timeout": "connect_timeout"}


def tag_settings(tags: dict[str, str]) -> dict[str, Any]:
    """The device settings a place's tags give (its other tags are not settings)."""
    return {setting: tags[tag] for tag, setting in SETTINGS.items() if tag in tags}


def tag_of(setting: str) -> str:
    """The tag that gives ``setting``, for messages."""
    return next(tag for tag, name in SETTINGS.items() if name == setting)
