"""The "LVD" sidebar tab of the 3D viewport."""

import textwrap

import bpy

from .export import ExportError, export_folder
from .fitting import scan_objects
from .operators import LVD_OT_export, LVD_OT_fit
from .preferences import preferences
from .properties import LICENSED_BODY_MODELS

# Characters per line of wrapped text: the sidebar's width over an average character's (about 7 px at UI scale 1);
# DEFAULT_WRAP when there is no region (scripts, background mode).
CHARACTER_WIDTH_PX = 7
DEFAULT_WRAP = 40


def wrapped_label(layout, context, text: str, icon: str = "NONE") -> None:
    """`text` as labels as wide as the sidebar (a single label cuts a long line off)."""
    region = context.region
    width = max(20, region.width // CHARACTER_WIDTH_PX) if region is not None else DEFAULT_WRAP
    column = layout.column(align=True)
    for k, line in enumerate(textwrap.wrap(text, width) or [""]):
        column.label(text=line, icon=icon if k == 0 else "BLANK1" if icon != "NONE" else "NONE")


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
            try:
                scans = scan_objects(context, batch=False)
            except ValueError as exc:
                wrapped_label(layout, context, str(exc), icon="INFO")
            else:
                icon = "MESH_DATA" if scans[0].type == "MESH" else "ERROR"
                layout.label(text=f"Scan: {scans[0].name}" if icon == "MESH_DATA" else f"{scans[0].name} is not a mesh", icon=icon)
            layout.prop(settings, "scan_units")

        layout.label(text="Body Model")
        prefs = preferences(context)
        grid = layout.grid_flow(columns=2, even_columns=True)
        for identifier in ("AUTO", "ANNY", "ANNY_HAND", *LICENSED_BODY_MODELS):
            cell = grid.row()
            cell.enabled = identifier not in LICENSED_BODY_MODELS or not getattr(prefs, f"{identifier.lower()}_problem")
            cell.prop_enum(settings, "body_model", identifier)
        for identifier in LICENSED_BODY_MODELS:
            problem = getattr(prefs, f"{identifier.lower()}_problem")
            if problem:
                wrapped_label(layout, context, problem, icon="INFO")

        layout.prop(settings, "iterations")
        layout.prop(settings, "refine")
        layout.prop(settings, "shape_as_keys")
        row = layout.row(align=True)
        row.operator(LVD_OT_fit.bl_idname, text="Fit").batch = False
        row.operator(LVD_OT_fit.bl_idname, text="Batch Fit Selected").batch = True
        if status.running:
            layout.progress(factor=status.factor, type="BAR", text=status.text or "Fitting")
        elif status.last_summary:
            wrapped_label(layout, context, status.last_summary)

        box = layout.box()
        box.label(text="Export")
        box.prop(settings, "export_format")
        if settings.export_format == "FBX":
            box.prop(settings, "export_preset")
        box.prop(settings, "export_folder")
        try:
            wrapped_label(box, context, f"to {export_folder(settings.export_folder)}")
        except ExportError as exc:
            wrapped_label(box, context, str(exc), icon="ERROR")
        box.operator(LVD_OT_export.bl_idname)


CLASSES = (LVD_PT_main,)
