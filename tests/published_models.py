"""The published models of benchmarks/published.py for the tests: fetched by `make models`, else a skip."""

from __future__ import annotations

from pathlib import Path

import pytest


def fetched(name: str):
    """``(benchmarks.published, its model record)`` for ``name``; skips when the model is not fetched."""
    published = pytest.importorskip("benchmarks.published")
    m = published.model(name)
    if not Path(m.path).is_file():
        pytest.skip(f"{name} is not fetched (make models)")
    return published, m
