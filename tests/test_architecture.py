"""The dependency direction, checked on the source: protocols <- agent, protocols <- host.

(import-linter cannot see packages mapped with setuptools' package-dir, so this reads the
imports itself.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the agent may import beyond the standard library: it must run on small boards
AGENT_THIRD_PARTY = {"numpy", "zmq", "onnxruntime", "ai_edge_litert", "tflite_runtime"}
PACKAGE = {"protocols": "qbench.protocols", "agent": "qbench.agent", "host": "qbench.host"}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    parts = [package, *path.relative_to(ROOT / package.split(".")[1]).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    else:
        parts = parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


def _sources(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder, forbidden", [
    ("protocols", ("qbench.agent", "qbench.host")),
    ("agent", ("qbench.host",)),
    ("host", ("qbench.agent",)),
])
def test_dependency_direction(folder, forbidden):
    for path in _sources(folder):
        bad = [m for m in _imports(path, PACKAGE[folder]) if m.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_agent_needs_only_numpy_pyzmq_and_a_runtime():
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in _sources("agent") + _sources("protocols"):
        for module in _imports(path, PACKAGE[path.relative_to(ROOT).parts[0]]):
            top = module.split(".")[0]
            assert top in stdlib or top == "qbench" or top in AGENT_THIRD_PARTY, f"{path.relative_to(ROOT)} imports {module}"


def test_the_import_checker_sees_relative_imports():
    found = _imports(ROOT / "host" / "session.py", "qbench.host")
    assert "qbench.host.compare" in found and "qbench.protocols.messages" in found


def test_the_qbench_facade_imports_nothing_of_ours_on_import():
    """`qbench/__init__.py` resolves its names on first use: an agent process imports it before qbench.agent."""
    import sys

    tree = ast.parse((ROOT / "qbench" / "__init__.py").read_text())
    imported = [alias.name if isinstance(node, ast.Import) else node.module
                for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names]
    assert imported and all(name.split(".")[0] in sys.stdlib_module_names or name == "__future__"
                            for name in imported), imported
