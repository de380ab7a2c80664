"""How a run treats lab boards: kept apart from the lab transport so that a run on a local or SSH device
sets them without importing the lab's SSH and gRPC stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabOptions:
    """How a run waits for lab boards (``--wait-timeout``, ``--priority``) and treats their health."""

    wait_timeout_s: float = 600.0
    priority: float = 0.0
    quarantine_after: int = 3
    health_check: bool = True
