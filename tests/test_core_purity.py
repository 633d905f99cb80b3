"""lvd_core is the layer below Blender: importing any of its modules brings in neither bpy nor lvd_blender."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lvd_core


@pytest.mark.slow
def test_no_core_module_imports_blender():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import lvd_core

        for module in pkgutil.walk_packages(lvd_core.__path__, "lvd_core."):
            importlib.import_module(module.name)
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("bpy", "lvd_blender")))
    """)
    root = Path(lvd_core.__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_core_source_imports_blender_even_lazily():
    """Imports inside functions too: the core reaches Blender only by running its exporter as a module."""
    found = []
    for path in Path(lvd_core.__file__).resolve().parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [f"{path.name}: {name}" for name in names if name.split(".")[0] in ("bpy", "lvd_blender", "mathutils")]
    assert found == []


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, at the top or inside functions (a submodule's import of its
    own package's __init__ is not counted: Python runs that first anyway)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        found = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
        graph[name] = found
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The sets of modules that import each other, directly or round a loop."""
    reach = {name: set() for name in graph}
    for start in graph:
        stack = list(graph[start])
        while stack:
            module = stack.pop()
            if module not in reach[start]:
                reach[start].add(module)
                stack += graph[module]
    loops = {frozenset({a} | {b for b in reach[a] if a in reach[b]}) for a in graph if a in reach[a]}
    return [set(loop) for loop in loops]


@pytest.mark.parametrize("package", ["lvd_core", "lvd_blender"])
def test_no_import_circles(package):
    root = Path(lvd_core.__file__).resolve().parents[1]
    assert circles(import_graph(root / package)) == []


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
