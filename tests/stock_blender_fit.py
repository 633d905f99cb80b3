"""Run by test_stock_blender.py with a stock Blender's Python (bpy and what it ships, nothing else): install the
extension zip with Blender's own installer, PyTorch with the extension's Install Dependencies (offline, from
LVD_WHEELHOUSE), then Fit the scan. Prints one JSON line (the last) for the test to check.

    python stock_blender_fit.py EXTENSION_ZIP SCAN_OBJ PHOTO   (BLENDER_USER_RESOURCES and LVD_WHEELHOUSE set)
"""

import importlib.util
import json
import sys
import time
import traceback

import bpy

PACKAGE = "bl_ext.user_default.lvd_fit"


def run_operator(report: dict, step: str, operator, **options) -> bool:
    """Call a bpy operator; record its result, or the error it raised, under `step`."""
    started = time.perf_counter()
    try:
        report[step] = sorted(operator(**options))
    except Exception:  # the operator's error report (RuntimeError) or anything it let through
        report[step] = traceback.format_exc(limit=2).strip().splitlines()[-1]
    report[f"{step}_s"] = round(time.perf_counter() - started, 1)
    return report[step] == ["FINISHED"]


def character(report: dict, prefix: str) -> None:
    """What the fit built: armatures, and the first one's bones and skinned body mesh."""
    armatures = [obj for obj in bpy.data.objects if obj.type == "ARMATURE"]
    report[f"{prefix}armatures"] = len(armatures)
    if armatures:
        report[f"{prefix}bones"] = len(armatures[0].data.bones)
        meshes = [child for child in armatures[0].children if child.type == "MESH"]
        report[f"{prefix}body_vertices"] = len(meshes[0].data.vertices) if meshes else 0
        report[f"{prefix}skinned"] = bool(meshes) and any(m.type == "ARMATURE" and m.object == armatures[0] for m in meshes[0].modifiers)
        report[f"{prefix}vertex_groups"] = len(meshes[0].vertex_groups) if meshes else 0


def main(zip_path: str, scan_path: str, photo_path: str) -> dict:
    report: dict = {}
    if not run_operator(report, "install_zip", bpy.ops.extensions.package_install_files,
                        filepath=zip_path, repo="user_default", enable_on_install=True):  # fmt: skip
        return report
    report["enabled"] = PACKAGE in bpy.context.preferences.addons
    preferences = sys.modules[f"{PACKAGE}.preferences"]
    report["missing_before"] = list(preferences.MISSING)
    if not run_operator(report, "install_torch", bpy.ops.lvd.install_dependencies):
        return report
    report["missing_after"] = list(preferences.MISSING)

    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.obj_import(filepath=scan_path)
    [scan] = bpy.context.selected_objects
    bpy.context.view_layer.objects.active = scan
    bpy.context.scene.lvd.input_kind = "SCAN"
    run_operator(report, "fit", bpy.ops.lvd.fit)
    character(report, "")

    bpy.ops.wm.read_homefile(use_empty=True)  # a photo: opencv, mediapipe and matplotlib from the wheels
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.lvd.photo_path = photo_path
    run_operator(report, "photo_fit", bpy.ops.lvd.fit)
    character(report, "photo_")
    torch = importlib.util.find_spec("torch")  # the PyTorch the fitting process imports (the same sys.path)
    report["torch_file"] = torch.origin if torch else None
    report["torch_in_blender"] = "torch" in sys.modules  # the fits ran in the fitting process: never here
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])), flush=True)
