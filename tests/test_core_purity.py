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
