"""Operators: they translate the UI into calls of fitting / export and report in one line.

Fit runs as a modal operator (the fit in the fitting process, progress on TIMER events, Esc cancels) when
invoked from the UI, and waits for the fit through execute() for scripts and background mode, where there is no
event loop."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty

from . import fitting, worker
from .core import add_dependency_folders, torch_available
from .export import ExportError, characters_in, export_characters
from .preferences import preferences
from .properties import LICENSED_BODY_MODELS

TIMER_STEP_S = 0.1
# Fits running in the background: (job, timer) per modal operator, so unregister can stop them.
RUNNING: dict = {}


def stop_running_fits(context) -> None:
    """Cancel background fits, remove their timers and end the fitting process (the add-on is going away)."""
    for job, timer in list(RUNNING.values()):
        job.stop()
        job.join(timeout=5.0)
        context.window_manager.event_timer_remove(timer)
    RUNNING.clear()
    worker.stop_fitting_process()


class LVD_OT_fit(bpy.types.Operator):
    """Fit the body model to the active scan or the photo, building a rigged, posed character"""

    bl_idname = "lvd.fit"
    bl_label = "Fit"
    # No REGISTER: a redo panel would rerun the whole fit on the main thread for every change.
    bl_options = {"UNDO"}

    batch: BoolProperty(name="Batch", description="Fit every selected mesh object, one character each", options={"SKIP_SAVE"})

    @classmethod
    def description(cls, context, properties):
        if properties.batch:
            return "Fit the body model to every selected mesh object, one character each (Esc cancels the rest)"
        return cls.__doc__

    @classmethod
    def poll(cls, context):
        if context.window_manager.lvd_progress.running:
            cls.poll_message_set("a fit is running: wait for it or press Esc")
            return False
        problem = fittable_problem(context)
        if problem:
            cls.poll_message_set(problem)
        return not problem

    def execute(self, context):
        run = self._prepare(context)
        if run is None:
            return {"CANCELLED"}
        run.job.run()
        run.handle(run.job.drain(), context)
        return self._finish(run)

    def invoke(self, context, event):
        run = self._prepare(context)
        if run is None:
            return {"CANCELLED"}
        self._run = run
        wm = context.window_manager
        wm.lvd_progress.running = True
        self._timer = wm.event_timer_add(TIMER_STEP_S, window=context.window)
        wm.modal_handler_add(self)
        RUNNING[id(self)] = (run.job, self._timer)
        run.job.start()
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            self._run.job.stop()  # finished fits stay
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = self._run.handle(self._run.job.drain(), context, budget_s=fitting.BUILD_BUDGET_S)
        status = context.window_manager.lvd_progress
        context.workspace.status_text_set(None if finished else f"LVD: {status.text} {status.factor:.0%} (Esc to cancel)")
        for area in context.screen.areas if context.screen else ():
            if area.type == "VIEW_3D":
                area.tag_redraw()
        if not finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        RUNNING.pop(id(self), None)
        return self._finish(self._run)

    def _prepare(self, context) -> fitting.FitRun | None:
        """Check the request and copy the inputs; None (after a one-line report) when it cannot run."""
        prefs = preferences(context)
        add_dependency_folders(prefs.dependency_folders())
        if not torch_available():
            return self._refuse("PyTorch is not installed: use Install Dependencies in the LVD add-on preferences")
        settings = context.scene.lvd
        if settings.body_model in LICENSED_BODY_MODELS:
            problem = getattr(prefs, f"{settings.body_model.lower()}_problem")  # found when the file was chosen
            if problem:
                return self._refuse(problem)
        fit_settings = fitting.fit_settings(context, prefs)
        items, skipped = [], []
        try:
            if settings.input_kind == "PHOTO":
                items.append(fitting.photo_item(context))
            else:
                objects = fitting.scan_objects(context, self.batch)
        except ValueError as exc:
            return self._refuse(str(exc))
        if settings.input_kind == "SCAN":
            for obj in objects:
                try:
                    items.append(fitting.scan_item(obj, context, fit_settings))
                except ValueError as exc:
                    skipped.append(f"{obj.name} ({exc})" if self.batch else str(exc))
            if not items:
                return self._refuse(("nothing to fit: " if self.batch else "") + "; ".join(skipped))
        return fitting.FitRun(items, fit_settings, skipped)

    def _refuse(self, message: str) -> None:
        self.report({"ERROR"}, message)

    def _finish(self, run: fitting.FitRun) -> set[str]:
        summary = run.summary()
        if not run.characters:
            self.report({"ERROR"}, summary)
            return {"CANCELLED"}  # nothing was built: no undo step
        self.report({"WARNING"} if run.failures or run.notes or run.doubtful else {"INFO"}, summary)
        return {"FINISHED"}


def fittable_problem(context) -> str:
    """Why Fit cannot run on what is selected ('' when it can), for the greyed-out button's tooltip."""
    settings = context.scene.lvd
    if settings.input_kind == "PHOTO":
        active = context.active_object
        if settings.photo_path or (active is not None and active.type == "EMPTY" and active.empty_display_type == "IMAGE"):
            return ""
        return "no photo: choose an image file or make an Image Empty (reference image) active"
    if not any(obj.type == "MESH" for obj in context.selected_objects) and (
        context.active_object is None or context.active_object.type != "MESH"
    ):
        active = context.active_object
        if active is not None:
            return f"{active.name} is {fitting.object_kind(active)} object: select the mesh object of a scan"
        return "nothing selected: select the mesh object of a scan"
    return ""


class LVD_OT_export(bpy.types.Operator):
    """Export each selected character (armature and body) to its own file"""

    bl_idname = "lvd.export"
    bl_label = "Export Characters"

    @classmethod
    def poll(cls, context):
        if characters_in(context.selected_objects):
            return True
        cls.poll_message_set("nothing to export: select fitted characters (their armature or body)")
        return False

    def execute(self, context):
        settings = context.scene.lvd
        armatures = characters_in(context.selected_objects)
        if not armatures:
            self.report({"ERROR"}, "nothing to export: select fitted characters (their armature or body)")
            return {"CANCELLED"}
        try:
            files = export_characters(armatures, settings.export_folder, settings.export_format, settings.export_preset)
        except (ExportError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {len(files)} file(s) to {files[0].parent}")
        return {"FINISHED"}


CLASSES = (LVD_OT_fit, LVD_OT_export)
