"""The "LVD" sidebar tab of the 3D viewport."""

import bpy

from .operators import LVD_OT_export, LVD_OT_fit
from .preferences import preferences
from .properties import LICENSED_BODY_MODELS


class LVD_PT_main(bpy.types.Panel):
    bl_label = "LVD Body Fit"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LVD"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.lvd
        status = context.window_manager.lvd_progress

        layout.prop(settings, "input_kind", expand=True)
        if settings.input_kind == "PHOTO":
            layout.prop(settings, "photo_path")
        else:
            active = context.active_object
            layout.label(text=f"Scan: {active.name}" if active else "Scan: select a mesh", icon="MESH_DATA")

        layout.label(text="Body Model")
        prefs = preferences(context)
        grid = layout.grid_flow(columns=2, even_columns=True)
        for identifier in ("ANNY", "ANNY_HAND", *LICENSED_BODY_MODELS):
            cell = grid.row()
            cell.enabled = identifier not in LICENSED_BODY_MODELS or not getattr(prefs, f"{identifier.lower()}_problem")
            cell.prop_enum(settings, "body_model", identifier)
        for identifier in LICENSED_BODY_MODELS:
            problem = getattr(prefs, f"{identifier.lower()}_problem")
            if problem:
                layout.label(text=problem, icon="INFO")

        layout.prop(settings, "iterations")
        layout.prop(settings, "refine")
        layout.prop(settings, "shape_as_keys")
        row = layout.row(align=True)
        row.enabled = not status.running
        row.operator(LVD_OT_fit.bl_idname, text="Fit").batch = False
        row.operator(LVD_OT_fit.bl_idname, text="Batch Fit Selected").batch = True
        if status.running:
            layout.progress(factor=status.factor, type="BAR", text=status.text or "Fitting")
        elif status.last_summary:
            layout.label(text=status.last_summary)
            layout.label(text=f"{status.last_seconds:.1f} s, fit {status.last_quality}")

        box = layout.box()
        box.label(text="Export")
        box.prop(settings, "export_format")
        if settings.export_format == "FBX":
            box.prop(settings, "export_preset")
        box.prop(settings, "export_folder")
        box.operator(LVD_OT_export.bl_idname)


CLASSES = (LVD_PT_main,)
