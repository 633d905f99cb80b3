"""Headless bpy for the tests: Blender's user folders in a temporary directory (set before `import bpy`, which
otherwise writes into ~/.config/blender), plus shared fixtures for the Blender tests."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="lvd-blender-user-"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402


def reset_scene():
    """An empty scene; add-ons stay enabled."""
    bpy.ops.wm.read_homefile(use_empty=True)
    return bpy.context.scene


def evaluated_world_vertices(obj) -> np.ndarray:
    """(V, 3) the object's deformed mesh (modifiers, shape keys) in world space."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    matrix = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


def data_block_names() -> dict[str, set[str]]:
    """Every object, mesh, armature, collection, action, image and material by name (to check that nothing
    was left behind)."""
    kinds = ("objects", "meshes", "armatures", "collections", "actions", "images", "materials", "shape_keys")
    return {kind: {block.name for block in getattr(bpy.data, kind)} for kind in kinds}
