"""Add-on preferences: the user's SMPL / MANO files (checked on change), checkpoints, device, and the
dependencies: which modules are missing, and Install Dependencies for PyTorch (see installer.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from . import installer, worker
from .core import add_dependency_folders, missing_projects, torch_available
from .jobs import Done, Failed, Item

ADDON_ID = __package__
PACKAGED = ADDON_ID.startswith("bl_ext.")  # installed as an extension (not the development tree)
TIMER_STEP_S = 0.25
# Read by draw(): refreshed at register, when a preference changes, and after an install (never in draw).
MISSING: list[str] = []
# The running or last Install Dependencies (one at a time).
INSTALLATION: installer.Installation | None = None


def preferences(context):
    return context.preferences.addons[ADDON_ID].preferences


def check_model_file(prefs, kind: str) -> None:
    """Set prefs' `<kind>_problem`: '' when its `<kind>_path` loads as that body model ("smpl" / "smplx" /
    "mano"), else the one-line reason. The file is loaded by the fitting process (Blender's never loads
    PyTorch): in the background while the UI runs, waiting for it in background mode (no event loop)."""
    path = getattr(prefs, f"{kind}_path")
    if not path:
        setattr(prefs, f"{kind}_problem", f"{kind.upper()} needs its model file: set it in the LVD add-on preferences")
        return
    if not torch_available():
        setattr(prefs, f"{kind}_problem", "PyTorch is needed to check the file: install the dependencies below")
        return
    job = worker.WorkerJob([Item(bpy.path.basename(path), (kind, bpy.path.abspath(path)))], None, worker.MODEL_FILE_JOB)
    if bpy.app.background:
        job.run()
        setattr(prefs, f"{kind}_problem", model_file_answer(job.drain()))
        return
    setattr(prefs, f"{kind}_problem", f"the {kind.upper()} file is being checked: a moment")
    job.start()

    def answer() -> float | None:
        if not job.finished():
            return TIMER_STEP_S
        addon = bpy.context.preferences.addons.get(ADDON_ID)
        if addon is not None and getattr(addon.preferences, f"{kind}_path") == path:  # not disabled or changed since
            setattr(addon.preferences, f"{kind}_problem", model_file_answer(job.drain()))
        return None

    bpy.app.timers.register(answer, first_interval=TIMER_STEP_S)


def model_file_answer(messages: list) -> str:
    """The problem a model-file check's messages tell ('' when the file loaded)."""
    for message in messages:
        if isinstance(message, Failed):
            return message.message
        if isinstance(message, Done):
            return ""
    return "the check was cancelled: choose the file again"


def _check_model_file(kind: str):
    def update(self, context):
        check_model_file(self, kind)

    return update


def dependencies_folder() -> Path:
    """The extension's own site-packages folder, where Install Dependencies puts PyTorch."""
    return Path(bpy.utils.extension_path_user(ADDON_ID, path="site-packages", create=True))


def own_dependencies_folder() -> str:
    """The extension's site-packages folder; '' for the development tree, which has no extension folder."""
    return str(dependencies_folder()) if PACKAGED else ""


def refresh_dependencies(prefs=None) -> None:
    """Put the dependency folders on sys.path and list the modules still missing (at register, when the
    site-packages preference changes, after an install)."""
    add_dependency_folders(prefs.dependency_folders() if prefs is not None else [own_dependencies_folder()])
    MISSING[:] = missing_projects()


def _site_packages_changed(self, context):
    refresh_dependencies(self)


TORCH_BUILD_ITEMS = [
    ("CPU", "CPU", f"PyTorch for the processor, works everywhere: {installer.BUILDS['CPU'].size}"),
    ("CUDA", "CUDA", f"PyTorch for NVIDIA GPUs (needs one and its driver; Windows and Linux): {installer.BUILDS['CUDA'].size}"),
]


class LVD_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    smpl_path: StringProperty(name="SMPL File", subtype="FILE_PATH", update=_check_model_file("smpl"),
                              description="Your SMPL model file (.pkl or .npz from smpl.is.tue.mpg.de)")  # fmt: skip
    smpl_problem: StringProperty(default="SMPL needs its model file: set it in the LVD add-on preferences")
    smplx_path: StringProperty(name="SMPL-X File", subtype="FILE_PATH", update=_check_model_file("smplx"),
                               description="Your SMPL-X model file (SMPLX_NEUTRAL.npz from smpl-x.is.tue.mpg.de)")  # fmt: skip
    smplx_problem: StringProperty(default="SMPL-X needs its model file: set it in the LVD add-on preferences")
    mano_path: StringProperty(name="MANO File", subtype="FILE_PATH", update=_check_model_file("mano"),
                              description="Your MANO model file (MANO_RIGHT.pkl from mano.is.tue.mpg.de)")  # fmt: skip
    mano_problem: StringProperty(default="MANO needs its model file: set it in the LVD add-on preferences")
    checkpoint_folder: StringProperty(
        name="Checkpoints", subtype="DIR_PATH", description="Folder of trained LVD networks; empty uses the bundled ones"
    )
    device: EnumProperty(
        name="Device",
        items=[("AUTO", "Auto", "CUDA when available, else the CPU"), ("CUDA", "CUDA", "An NVIDIA GPU (needs the CUDA build of PyTorch)"),
               ("CPU", "CPU", "The processor (slower, works everywhere)")],
    )  # fmt: skip
    batch_size: IntProperty(
        name="Batch Size", min=0, max=64, default=0,
        description="Scans Batch fit fits together (the descent and the body fit batched, for a GPU); 0: 8 on CUDA, 1 on the CPU",
    )  # fmt: skip
    torch_build: EnumProperty(name="PyTorch Build", items=TORCH_BUILD_ITEMS, description="Which PyTorch Install Dependencies installs")
    site_packages: StringProperty(
        name="Site-packages Folder", subtype="DIR_PATH", update=_site_packages_changed,
        description="An existing Python 3.11 site-packages folder with PyTorch (installed by hand)",
    )  # fmt: skip

    def dependency_folders(self) -> list[str]:
        return [own_dependencies_folder(), bpy.path.abspath(self.site_packages) if self.site_packages else ""]

    def draw(self, context):
        layout = self.layout
        for kind in ("smpl", "smplx", "mano"):
            layout.prop(self, f"{kind}_path")
            problem = getattr(self, f"{kind}_problem")
            if getattr(self, f"{kind}_path") and problem:
                layout.label(text=problem, icon="ERROR")
        layout.prop(self, "checkpoint_folder")
        layout.prop(self, "device")
        layout.prop(self, "batch_size")
        self.draw_dependencies(layout.box())

    def draw_dependencies(self, box):
        if MISSING:
            box.label(text="Missing: " + ", ".join(MISSING) + " (needed to fit)", icon="ERROR")
        else:
            box.label(text="Dependencies: all installed", icon="CHECKMARK")
            box.label(text=worker.cuda_status())
        if INSTALLATION is not None and INSTALLATION.running:
            row = box.row()
            row.progress(factor=INSTALLATION.fraction, type="BAR", text=INSTALLATION.text)
            row.operator(LVD_OT_cancel_install.bl_idname, text="", icon="CANCEL")
        else:
            if INSTALLATION is not None and INSTALLATION.error:
                box.label(text=INSTALLATION.error, icon="ERROR")
            if "torch" in MISSING or self.torch_build == "CUDA":
                row = box.row()
                row.prop(self, "torch_build", expand=True)
                row.operator(LVD_OT_install_dependencies.bl_idname)
        row = box.row()
        row.prop(self, "site_packages")
        row.operator(LVD_OT_check_dependencies.bl_idname, text="", icon="FILE_REFRESH")


def install_problem(build: str) -> str:
    """'' when Install Dependencies can run now, else the one-line reason with what to do."""
    if INSTALLATION is not None and INSTALLATION.running:
        return "an install is already running"
    target = dependencies_folder()
    by_hand = installer.command_line(installer.pip_command(str(target), build))
    if installer.needs_network() and not bpy.app.online_access:
        return f"Blender is offline: allow Online Access (Preferences > System > Network), or install by hand: {by_hand}"
    if not installer.pip_available():
        return f"Blender's Python has no pip: run {installer.command_line([sys.executable, '-m', 'ensurepip'])}, then install again"
    if build == "CUDA" and not installer.nvidia_gpu_present():
        return "no NVIDIA GPU found (CUDA needs one and its driver): choose the CPU build"
    if "torch" in sys.modules:
        return "PyTorch is loaded in this Blender session: restart Blender, then install"
    return ""


class LVD_OT_install_dependencies(bpy.types.Operator):
    """Install PyTorch into the extension's own folder with pip, in the background"""

    bl_idname = "lvd.install_dependencies"
    bl_label = "Install Dependencies"

    @classmethod
    def description(cls, context, properties):
        build = preferences(context).torch_build
        return f"Install PyTorch {installer.TORCH_REQUIREMENT.split('==')[1]} ({build} build, {installer.BUILDS[build].size}) into the extension's own folder with pip"

    def execute(self, context):
        if not self._start(context):
            return {"CANCELLED"}
        INSTALLATION.wait()
        return self._finish(context)

    def invoke(self, context, event):
        if not self._start(context):
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(TIMER_STEP_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            INSTALLATION.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = INSTALLATION.poll()
        for window in context.window_manager.windows:
            for area in window.screen.areas:
                if area.type == "PREFERENCES":
                    area.tag_redraw()
        if not finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(context)

    def _start(self, context) -> bool:
        global INSTALLATION
        build = preferences(context).torch_build
        problem = install_problem(build)
        if problem:
            self.report({"ERROR"}, problem)
            return False
        INSTALLATION = installer.Installation(dependencies_folder(), build).start()
        return True

    def _finish(self, context) -> set[str]:
        if INSTALLATION.error:
            self.report({"ERROR"}, f"Installing PyTorch: {INSTALLATION.error}")
            return {"CANCELLED"}
        refresh_dependencies(preferences(context))
        self.report({"INFO"}, f"PyTorch installed into {INSTALLATION.target}")
        return {"FINISHED"}


class LVD_OT_cancel_install(bpy.types.Operator):
    """Stop the running PyTorch install (nothing is changed)"""

    bl_idname = "lvd.cancel_install"
    bl_label = "Cancel Install"

    @classmethod
    def poll(cls, context):
        return INSTALLATION is not None and INSTALLATION.running

    def execute(self, context):
        INSTALLATION.cancel()
        return {"FINISHED"}


class LVD_OT_check_dependencies(bpy.types.Operator):
    """Look again for the modules a fit needs (after installing some by hand)"""

    bl_idname = "lvd.check_dependencies"
    bl_label = "Check Dependencies"

    def execute(self, context):
        refresh_dependencies(preferences(context))
        self.report({"WARNING"} if MISSING else {"INFO"}, "missing: " + ", ".join(MISSING) if MISSING else "all dependencies found")
        return {"FINISHED"}


def stop_installation() -> None:
    """Cancel a running install (at unregister: its pip must not outlive the add-on)."""
    if INSTALLATION is not None and INSTALLATION.running:
        INSTALLATION.cancel()
        INSTALLATION.poll()


CLASSES = (LVD_AddonPreferences, LVD_OT_install_dependencies, LVD_OT_cancel_install, LVD_OT_check_dependencies)
