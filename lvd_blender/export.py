"""Export characters (an armature and its skinned meshes) to FBX or GLB, one file per character, named after
the armature. The pose is kept in both formats; shape keys and every skinning weight are kept."""

from __future__ import annotations

from pathlib import Path

import bpy

# FBX settings per target engine. Unity wants the scale applied to the hierarchy; Unreal turns an armature
# object named "Armature" into an extra root bone (checked in `export_characters`).
FBX_PRESETS = {
    "BLENDER": dict(apply_scale_options="FBX_SCALE_NONE", axis_forward="-Z", axis_up="Y"),
    "UNITY": dict(apply_scale_options="FBX_SCALE_ALL", axis_forward="-Z", axis_up="Y"),
    "UNREAL": dict(apply_scale_options="FBX_SCALE_NONE", axis_forward="-Z", axis_up="Y"),
}
FORMATS = {"FBX": ".fbx", "GLB": ".glb"}


class ExportError(ValueError):
    """A character cannot be exported as asked; the message says why in one line."""


def character_objects(armature_obj) -> list:
    """The armature and the meshes it deforms (its children)."""
    return [armature_obj, *(child for child in armature_obj.children if child.type == "MESH")]


def characters_in(objects) -> list:
    """The distinct armatures among `objects` and their parents (selecting a body mesh selects its character)."""
    armatures = []
    for obj in objects:
        armature = obj if obj.type == "ARMATURE" else obj.parent
        if armature is not None and armature.type == "ARMATURE" and armature not in armatures:
            armatures.append(armature)
    return armatures


def export_characters(armatures, folder: str | Path, file_format: str = "FBX", preset: str = "BLENDER") -> list[Path]:
    """Write each armature's character to `folder`/<armature name>.fbx|.glb; `preset` (BLENDER, UNITY,
    UNREAL) picks the FBX axes and scaling (glTF has one convention). Returns the files written."""
    if preset == "UNREAL" and any(a.name == "Armature" for a in armatures):
        raise ExportError('rename the armature "Armature": Unreal imports an armature of that name as an extra bone')
    folder = export_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    view_layer = bpy.context.view_layer
    selected, active = list(bpy.context.selected_objects), view_layer.objects.active
    written = []
    try:
        for armature_obj in armatures:
            path = folder / (bpy.path.clean_name(armature_obj.name) + FORMATS[file_format])
            for obj in bpy.context.selected_objects:
                obj.select_set(False)
            for obj in character_objects(armature_obj):
                obj.select_set(True)
            view_layer.objects.active = armature_obj
            _write(path, file_format, preset)
            written.append(path)
    finally:
        for obj in bpy.context.selected_objects:
            obj.select_set(False)
        for obj in selected:
            obj.select_set(True)
        view_layer.objects.active = active
    return written


def export_folder(folder: str | Path) -> Path:
    """The absolute folder `folder` names: "//..." is relative to the saved .blend file. ExportError for a
    relative folder that would land in the working directory of Blender's process, which the user never sees
    (an unsaved .blend has no folder)."""
    resolved = Path(bpy.path.abspath(str(folder)))
    if resolved.is_absolute():
        return resolved
    if str(folder).startswith("//"):
        raise ExportError(f"the .blend is not saved, so {folder!r} (its folder) is nowhere: save the .blend or choose an export folder")
    raise ExportError(f"export folder {str(folder)!r} is relative: choose an absolute folder, or // for the .blend's folder")


def _write(path: Path, file_format: str, preset: str) -> None:
    if file_format == "FBX":
        bpy.ops.export_scene.fbx(
            filepath=str(path),
            use_selection=True,
            object_types={"ARMATURE", "MESH"},
            add_leaf_bones=False,  # engines would get an extra "_end" bone per leaf
            use_mesh_modifiers=False,  # applying the Armature modifier would bake the pose and drop shape keys
            mesh_smooth_type="FACE",
            **FBX_PRESETS[preset],
        )
    else:
        bpy.ops.export_scene.gltf(
            filepath=str(path),
            export_format="GLB",  # the enum's default reads back empty through RNA
            use_selection=True,
            export_all_influences=True,  # the default keeps only 4 weights per vertex
            export_rest_position_armature=False,  # True would drop the fitted pose
            export_apply=False,
        )
