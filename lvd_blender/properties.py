"""The extension's settings (per scene) and the running job's progress (per window manager, not saved)."""

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

# UI identifier -> lvd_core body model name ("auto": chosen per scan by lvd_blender.fitting.scan_body_model).
BODY_MODELS = {"AUTO": "auto", "ANNY": "anny", "ANNY_HAND": "anny-hand", "SMPL": "smpl", "SMPLX": "smplx", "MANO": "mano"}
# UI identifier -> the units lvd_core reads a scan in (None: from its size).
SCAN_UNITS = {"AUTO": None, "M": "m", "CM": "cm", "MM": "mm"}
LICENSED_BODY_MODELS = ("SMPL", "SMPLX", "MANO")  # need the user's own model file (set in the preferences)


class LVD_PG_settings(bpy.types.PropertyGroup):
    input_kind: EnumProperty(
        name="Input",
        items=[
            ("SCAN", "Scan", "Fit the active mesh object (a body or hand scan)"),
            ("PHOTO", "Photo", "Fit a photo: the image file below, or the active Image Empty"),
        ],
    )
    photo_path: StringProperty(name="Photo", subtype="FILE_PATH", description="Image file of a person; a person mask saved beside it as <name>_mask.png is used")
    body_model: EnumProperty(
        name="Body Model",
        items=[
            ("AUTO", "Auto", "Anny Hand for a hand-sized scan (up to 35 cm across), else Anny Body; Anny Body for photos"),
            ("ANNY", "Anny Body", "Anny full body (open, ships with LVD)"),
            ("ANNY_HAND", "Anny Hand", "Anny hand (open, ships with LVD)"),
            ("SMPL", "SMPL", "SMPL body fitted to the Anny fit (needs your SMPL model file, see the preferences)"),
            ("SMPLX", "SMPL-X", "SMPL-X body fitted to the Anny fit (needs your SMPL-X model file, see the preferences)"),
            ("MANO", "MANO", "MANO hand fitted to the Anny hand fit (needs your MANO model file, see the preferences)"),
        ],
    )
    scan_units: EnumProperty(
        name="Scan Units",
        description="What one Blender unit of the scan is; the character is built at real size either way",
        items=[
            ("AUTO", "Auto", "From the scan's size: the unit in which it is a plausible body or hand"),
            ("M", "Metres", "One Blender unit of the scan is a metre"),
            ("CM", "Centimetres", "One Blender unit of the scan is a centimetre (e.g. an OBJ exported in cm)"),
            ("MM", "Millimetres", "One Blender unit of the scan is a millimetre"),
        ],
    )
    iterations: IntProperty(
        name="Descent Iterations", min=0, max=50, default=0, description="Vertex descent steps; 0 uses the trained default"
    )
    refine: BoolProperty(name="Refine to the Input", default=True,
                         description="After the fit, pull the body onto the scan surface, or its outline onto the photo's person mask")
    shape_as_keys: BoolProperty(
        name="Shape as Shape Keys", default=False, description="Keep the body shape editable as shape keys over the neutral body"
    )
    export_format: EnumProperty(
        name="Format",
        items=[
            ("FBX", "FBX", "Autodesk FBX: Unity, Unreal, Maya, 3ds Max"),
            ("GLB", "glTF Binary", "One .glb file: web viewers, Godot, three.js"),
        ],
    )
    export_preset: EnumProperty(
        name="Target",
        items=[
            ("BLENDER", "Blender", "FBX axes and scale as Blender writes them"),
            ("UNITY", "Unity", "FBX with the scale applied to the hierarchy"),
            ("UNREAL", "Unreal", "FBX for Unreal (the armature must not be named 'Armature')"),
        ],
    )
    export_folder: StringProperty(
        name="Folder",
        subtype="DIR_PATH",
        default="//",
        description="Where the files go; the default // is the folder of the saved .blend file",
    )


class LVD_PG_progress(bpy.types.PropertyGroup):
    running: BoolProperty()
    factor: FloatProperty(min=0.0, max=1.0)
    text: StringProperty()
    last_seconds: FloatProperty()
    last_quality: StringProperty()  # the last fit's quality_label(short=True)
    last_summary: StringProperty()


CLASSES = (LVD_PG_settings, LVD_PG_progress)


def register_properties():
    bpy.types.Scene.lvd = bpy.props.PointerProperty(type=LVD_PG_settings)
    bpy.types.WindowManager.lvd_progress = bpy.props.PointerProperty(type=LVD_PG_progress)


def unregister_properties():
    del bpy.types.WindowManager.lvd_progress
    del bpy.types.Scene.lvd
