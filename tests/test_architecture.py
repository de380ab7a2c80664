"""The dependency direction, checked on the source: protocols <- agent, protocols <- host.

(import-linter cannot see packages mapped with setuptools' package-dir, so this reads the
imports itself.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what the agent may import beyond the standard library: it must run on small boards
AGENT_THIRD_PARTY = {"numpy", "zmq", "onnxruntime", "ai_edge_litert", "tflite_runtime"}
PACKAGE = {"protocols": "qbench.protocols", "agent": "qbench.agent", "host": "qbench.host"}


def _module_name(path: Path, package: str) -> str:
    parts = [package, *path.relative_to(ROOT / package.split(".")[1]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str, top_level_only: bool = False) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved; ``from . import x``
    gives the module ``x``). ``top_level_only``: the imports that run when the module is imported,
    not those inside functions or under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    parts = [package, *path.relative_to(ROOT / package.split(".")[1]).with_suffix("").parts][:-1]
    nodes = _top_level(tree.body) if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def _top_level(body: list) -> list:
    """The statements of a module body that run at import: into try/if blocks, not into functions,
    classes' methods or ``if TYPE_CHECKING:``."""
    out = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(_top_level(node.body + node.orelse + getattr(node, "finalbody", [])
                                  + [s for h in getattr(node, "handlers", []) for s in h.body]))
    return out


def _host_graph(top_level_only: bool = True) -> dict[str, set[str]]:
    """host module -> the host modules it imports (when imported, with ``top_level_only``)."""
    modules = {_module_name(p, "qbench.host"): p for p in _sources("host")}
    return {name: {m for m in _imports(path, "qbench.host", top_level_only) if m in modules and m != name}
            for name, path in modules.items()}


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
    assert {"qbench.host.formats", "qbench.host.data", "qbench.protocols.messages"} <= found


def test_no_host_module_imports_back_into_the_session():
    """What the session uses (formats, run state, report prefetch) never needs the session itself, not
    even for type hints or inside a function."""
    graph = _host_graph(top_level_only=False)
    reached, todo = set(), list(graph["qbench.host.session"])
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert "qbench.host.session" not in reached


def test_host_modules_import_each_other_without_a_circle():
    graph = _host_graph()
    state: dict[str, int] = {}  # 1: on the path being explored, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [module, dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_qbench_facade_imports_nothing_of_ours_on_import():
    """`qbench/__init__.py` resolves its names on first use: an agent process imports it before qbench.agent."""
    import sys

    tree = ast.parse((ROOT / "qbench" / "__init__.py").read_text())
    imported = [alias.name if isinstance(node, ast.Import) else node.module
                for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names]
    assert imported and all(name.split(".")[0] in sys.stdlib_module_names or name == "__future__"
                            for name in imported), imported


def test_the_library_imports_nothing_of_the_cli():
    """The CLI is a thin layer over the library (host/), which the Python API uses without it."""
    for path in _sources("host"):
        if path.relative_to(ROOT / "host").parts[0] == "cli":
            continue
        bad = [m for m in _imports(path, "qbench.host") if m.startswith("qbench.host.cli")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_a_local_run_imports_no_ssh_or_lab_stack(tmp_path):
    """What `qbench run --device local` sets up before its session imports neither paramiko nor labgrid's
    gRPC client: they cost start-up time (0.16 s) on every run, and a board's own Python may lack them."""
    code = (
        "import sys\n"
        "from qbench.host.cli import run\n"
        "from qbench.host.inventory import load_inventory\n"
        "from qbench.host.run_options import RunOptions\n"
        "from qbench.host.transport.factory import transport_for\n"
        "inventory = load_inventory(None)\n"
        "transport_for(inventory.get('local'), False, RunOptions().lab(inventory))\n"
        "print(sorted(m for m in ('paramiko', 'labgrid', 'grpc') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
