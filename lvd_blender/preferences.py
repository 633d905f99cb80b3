"""Add-on preferences: the user's SMPL / MANO files (checked on change), checkpoints, device, and PyTorch."""

from __future__ import annotations

import subprocess
import sys

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from .core import add_dependency_folders, core, cuda_status, torch_available

ADDON_ID = __package__
TORCH_REQUIREMENT = "torch>=2.4"


def preferences(context):
    return context.preferences.addons[ADDON_ID].preferences


def model_file_problem(kind: str, path: str) -> str:
    """'' when `path` loads as the `kind` ("smpl" / "mano") body model, else the one-line reason."""
    if not path:
        return f"{kind.upper()} needs its model file: set it in the LVD add-on preferences"
    if not torch_available():
        return "PyTorch is needed to check the file: install the dependencies below"
    body = core("body")
    try:
        body.load_body_model(kind, bpy.path.abspath(path))
    except body.BodyModelError as exc:
        return str(exc)
    return ""


def _check_model_file(kind: str):
    def update(self, context):
        add_dependency_folders(self.dependency_folders())
        setattr(self, f"{kind}_problem", model_file_problem(kind, getattr(self, f"{kind}_path")))

    return update


def dependencies_folder() -> str:
    """The extension's own site-packages folder, where Install Dependencies puts PyTorch."""
    return bpy.utils.extension_path_user(ADDON_ID, path="site-packages", create=True)


class LVD_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    smpl_path: StringProperty(name="SMPL File", subtype="FILE_PATH", update=_check_model_file("smpl"),
                              description="Your SMPL model file (.pkl or .npz from smpl.is.tue.mpg.de)")  # fmt: skip
    smpl_problem: StringProperty(default="SMPL needs its model file: set it in the LVD add-on preferences")
    mano_path: StringProperty(name="MANO File", subtype="FILE_PATH", update=_check_model_file("mano"),
                              description="Your MANO model file (MANO_RIGHT.pkl from mano.is.tue.mpg.de)")  # fmt: skip
    mano_problem: StringProperty(default="MANO needs its model file: set it in the LVD add-on preferences")
    checkpoint_folder: StringProperty(
        name="Checkpoints", subtype="DIR_PATH", description="Folder of trained LVD networks; empty uses the bundled ones"
    )
    device: EnumProperty(
        name="Device",
        items=[("AUTO", "Auto", "CUDA when available, else the CPU"), ("CUDA", "CUDA", ""), ("CPU", "CPU", "")],
    )
    batch_size: IntProperty(
        name="Batch Size", min=0, max=64, default=0,
        description="Scans Batch fit fits together (the descent and the body fit batched, for a GPU); 0: 8 on CUDA, 1 on the CPU",
    )  # fmt: skip
    site_packages: StringProperty(
        name="Site-packages Folder", subtype="DIR_PATH", description="An existing Python 3.11 site-packages with PyTorch"
    )

    def dependency_folders(self) -> list[str]:
        own = bpy.utils.extension_path_user(ADDON_ID, path="site-packages") if ADDON_ID.startswith("bl_ext.") else ""
        return [own, bpy.path.abspath(self.site_packages) if self.site_packages else ""]

    def draw(self, context):
        layout = self.layout
        for kind in ("smpl", "mano"):
            layout.prop(self, f"{kind}_path")
            problem = getattr(self, f"{kind}_problem")
            if getattr(self, f"{kind}_path") and problem:
                layout.label(text=problem, icon="ERROR")
        layout.prop(self, "checkpoint_folder")
        layout.prop(self, "device")
        layout.prop(self, "batch_size")
        box = layout.box()
        add_dependency_folders(self.dependency_folders())
        if torch_available():
            box.label(text="PyTorch: installed", icon="CHECKMARK")
            box.label(text=cuda_status())
        else:
            box.label(text="PyTorch: not installed (needed to fit)", icon="ERROR")
            box.operator(LVD_OT_install_dependencies.bl_idname)
        box.prop(self, "site_packages")


class LVD_OT_install_dependencies(bpy.types.Operator):
    """Download PyTorch (about 200 MB for the CPU build) into the extension's own folder with pip"""

    bl_idname = "lvd.install_dependencies"
    bl_label = "Install Dependencies"

    def execute(self, context):
        if not bpy.app.online_access:
            self.report(
                {"ERROR"},
                "Blender is offline: allow Online Access (Preferences > System > Network) or set a site-packages folder with PyTorch",
            )
            return {"CANCELLED"}
        target = dependencies_folder()
        command = [sys.executable, "-m", "pip", "install", "--upgrade", "--target", target, TORCH_REQUIREMENT]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            last_line = (completed.stderr.strip().splitlines() or ["pip failed"])[-1]
            self.report({"ERROR"}, f"Installing PyTorch failed: {last_line}")
            return {"CANCELLED"}
        add_dependency_folders([target])
        self.report({"INFO"}, f"PyTorch installed into {target}")
        return {"FINISHED"}


CLASSES = (LVD_AddonPreferences, LVD_OT_install_dependencies)
