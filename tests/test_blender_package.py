"""The extension zip: built with Blender's own builder, validated, installed into headless Blender; it builds a
character through the installed (vendored) lvd_core and fits a scan with its vendored weights. The platform
zips' wheels: one per requirement and platform, as Blender's builder assigns them."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import ast
import importlib
import importlib.util
import re
import tomllib
import zipfile
from pathlib import Path

import bpy
import numpy as np
import pytest

import build
from test_blender_addon import ON_SCAN_MM, activate, body_scan_object, mean_distance_mm
from test_blender_character import placement, random_params

INSTALLED = "bl_ext.user_default.lvd_fit"


@pytest.mark.slow
def test_zip_installs_and_builds_a_character(tmp_path):
    [zip_path] = build.build(tmp_path, platforms=())
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"blender_manifest.toml", "__init__.py", "vendor/lvd_core/character.py", "vendor/weights/anny/anny.safetensors"} <= names
    assert not any("__pycache__" in name for name in names)

    blender_support.reset_scene()
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    try:
        assert INSTALLED in bpy.context.preferences.addons
        assert hasattr(bpy.ops.lvd, "fit") and hasattr(bpy.ops.lvd, "export") and hasattr(bpy.types, "LVD_PT_main")
        vendored = lambda module: importlib.import_module(f"{INSTALLED}.vendor.lvd_core.{module}")  # noqa: E731
        character = importlib.import_module(f"{INSTALLED}.character")
        body = vendored("body").load_body_model("anny-hand")
        params = random_params(body)
        description = vendored("character").character_description(body, params)
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


def test_zip_leaves_out_what_a_fit_never_imports(tmp_path):
    staged = build.stage(tmp_path / "lvd_fit") / "vendor" / "lvd_core"
    left_out = {"cli", "scale_out", "train", "train_image", "preview", "outputs", "synth.demo", "synth.make_validation"}
    kept = {".".join(path.relative_to(staged).with_suffix("").parts) for path in staged.rglob("*.py")}
    assert kept and not kept & left_out and not (staged / "data").exists()
    for path in staged.rglob("*.py"):
        package = path.relative_to(staged).parent.parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                targets = [".".join((*base, *(node.module or "").split("."))).strip(".")]
                targets += [f"{targets[0]}.{alias.name}".strip(".") for alias in node.names]
                assert not set(targets) & left_out, f"{path.name} imports {targets}, which the zip leaves out"


def test_the_extensions_modules_import_the_lvd_core_they_carry(tmp_path):
    staged = build.stage(tmp_path / "lvd_fit")
    for module in (build.ROOT / "lvd_blender").glob("*.py"):
        source, packaged = module.read_text(), (staged / module.name).read_text()
        assert not re.search(r"^\s*(from|import) lvd_core\b", packaged, flags=re.MULTILINE), module.name
        assert packaged.count("from .vendor.lvd_core") == len(re.findall(r"^\s*from lvd_core\b", source, flags=re.MULTILINE))
    assert "    from .vendor.lvd_core.body import load_body_model" in (staged / "fit_work.py").read_text()
    with pytest.raises(ValueError, match="write `from lvd_core"):
        build.vendored_imports("import lvd_core.pipeline\n")


def test_every_module_a_fit_needs_is_bundled_or_installed():
    core = importlib.import_module("lvd_blender.core")
    bundled = build.required_projects()
    assert set(core.FIT_MODULES.values()) - bundled == {"torch"}
    assert not {"torch", "numpy", "requests"} & bundled  # installed separately, or shipped with Blender
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", line) for line in build.requirements())


@pytest.mark.slow
def test_staged_wheels_cover_every_platform(tmp_path):
    """The staged manifest lists the registry's wheels of every requirement for each platform (as Blender's own
    builder assigns them to platforms), each present in the staged folder; no torch or numpy."""
    staged = build.stage(tmp_path / "lvd_fit", platforms=build.PLATFORMS)
    manifest = tomllib.loads((staged / "blender_manifest.toml").read_text())
    assert manifest["platforms"] == list(build.PLATFORMS) and manifest["blender_version_max"] == "5.1.0"
    listed = manifest["wheels"]
    assert sorted(path.name for path in (staged / "wheels").iterdir()) == sorted(Path(wheel).name for wheel in listed)
    spec = importlib.util.spec_from_file_location("blender_ext", build.blender_ext_script())
    blender_ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blender_ext)
    wanted = sorted(build.required_projects())
    for platform in build.PLATFORMS:
        wheels = [Path(wheel) for wheel in listed if blender_ext.blender_platform_compatible_with_wheel_platform_from_filepath(platform, wheel)]
        assert sorted(build.wheel_project(wheel) for wheel in wheels) == wanted, platform
        assert all({(3,), (3, 11)} & blender_ext.python_versions_from_wheel(wheel.name) for wheel in wheels), platform
    assert not any(build.wheel_project(Path(wheel)) in {"torch", "numpy"} for wheel in listed)


def stand_in_wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
    """A wheel holding only its METADATA (name, version, Requires-Dist lines)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_unmet_dependencies_follow_each_platforms_markers_and_versions(tmp_path):
    wheels = [
        stand_in_wheel(tmp_path, "scanner", "1.0", "helper>=2", 'winonly; sys_platform == "win32"', "torch", "numpy<2",
                       'docs; extra == "docs"', 'old; python_version < "3.10"'),  # fmt: skip
        stand_in_wheel(tmp_path, "helper", "1.5"),
    ]
    assert build.unmet_dependencies("linux-x64", wheels) == ["scanner: helper>=2"]  # too old; torch, numpy not bundled
    assert build.unmet_dependencies("windows-x64", wheels) == ["scanner: helper>=2", 'scanner: winonly; sys_platform == "win32"']
    wheels[1] = stand_in_wheel(tmp_path, "helper", "2.0")
    assert build.unmet_dependencies("macos-arm64", wheels) == []


@pytest.mark.slow
def test_each_platforms_wheels_meet_each_others_dependencies():
    """Every dependency a bundled wheel declares for the platform is bundled too, or deliberately left out
    (build.NOT_BUNDLED): each platform's zip installs a whole fit environment, torch aside."""
    for platform in build.PLATFORMS:
        assert build.unmet_dependencies(platform, build.download_wheels(platform)) == [], platform
