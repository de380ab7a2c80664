"""Shared fixtures. Test helper modules (models.py, cli.py, ...) live beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def agent_cache(tmp_path_factory) -> Path:
    """One home (and so one model cache) for the session's agents: content-addressed, so sharing is safe."""
    return tmp_path_factory.mktemp("agent-home")
