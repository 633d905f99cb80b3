"""The extension zip: built with Blender's own builder, validated, installed into headless Blender; it builds a
character through the installed (vendored) lvd_core and fits a scan with its vendored weights."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import importlib
import zipfile

import bpy
import numpy as np

import build
from test_blender_addon import ON_SCAN_MM, activate, body_scan_object, mean_distance_mm
from test_blender_character import placement, random_params

INSTALLED = "bl_ext.user_default.lvd_fit"


def test_zip_installs_and_builds_a_character(tmp_path):
    [zip_path] = build.build(tmp_path, platforms=())
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

        # A real Fit through the installed operator, its vendored lvd_core and its vendored weights.
        blender_support.reset_scene()
        scan, world_points = body_scan_object("Scanned person", seed=6)
        activate(scan)
        bpy.context.scene.lvd.body_model, bpy.context.scene.lvd.input_kind = "ANNY", "SCAN"
        assert bpy.ops.lvd.fit() == {"FINISHED"}
        [armature] = [obj for obj in bpy.data.objects if obj.type == "ARMATURE"]
        [body_mesh] = armature.children
        assert mean_distance_mm(blender_support.evaluated_world_vertices(body_mesh), world_points) < ON_SCAN_MM
    finally:
        repos = bpy.context.preferences.extensions.repos
        repo_index = next(i for i, repo in enumerate(repos) if repo.module == "user_default")
        bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="lvd_fit")
    assert INSTALLED not in bpy.context.preferences.addons and not hasattr(bpy.types, "LVD_PT_main")
