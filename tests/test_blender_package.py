"""The extension zip: built with Blender's own builder, validated, installed into headless Blender, and it
builds a character through the installed (vendored) lvd_core."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import importlib
import time
import zipfile

import bpy
import numpy as np

import build
from test_blender_character import placement, random_params

INSTALLED = "bl_ext.user_default.lvd_fit"


def test_zip_installs_and_builds_a_character(tmp_path):
    started = time.perf_counter()
    [zip_path] = build.build(tmp_path)
    build_seconds = time.perf_counter() - started
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py", "vendor/lvd_core/export.py", "vendor/weights/anny/anny.safetensors"} <= names
    assert not any("__pycache__" in name for name in names)

    blender_support.reset_scene()
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    try:
        assert INSTALLED in bpy.context.preferences.addons
        assert hasattr(bpy.ops.lvd, "fit") and hasattr(bpy.ops.lvd, "export") and hasattr(bpy.types, "LVD_PT_main")
        core = importlib.import_module(f"{INSTALLED}.core")
        character = importlib.import_module(f"{INSTALLED}.character")
        body = core.core("body").load_body_model("anny-hand")
        params = random_params(body)
        description = core.core("export").character_description(body, params)
        frame = placement() @ description["model_to_zup"]
        _, mesh_obj = character.build_character("Installed", description, frame_matrix=frame)
        expected = body(params).vertices[0].double().numpy() @ frame[:3, :3].T + frame[:3, 3]
        assert np.abs(blender_support.evaluated_world_vertices(mesh_obj) - expected).max() < 1e-3
    finally:
        repos = bpy.context.preferences.extensions.repos
        repo_index = next(i for i, repo in enumerate(repos) if repo.module == "user_default")
        bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="lvd_fit")
    assert INSTALLED not in bpy.context.preferences.addons and not hasattr(bpy.types, "LVD_PT_main")
    assert build_seconds < 30
