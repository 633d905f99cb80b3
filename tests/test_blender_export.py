"""Export round trip: every FBX preset and GLB re-import with the same bones, vertices, weights and pose."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import bpy
import numpy as np
import pytest

from lvd_blender.character import build_character
from lvd_blender.export import ExportError, export_characters
from lvd_core.body import load_body_model
from lvd_core.character import character_description
from test_blender_character import placement, random_params


def skin_matrix(mesh_obj, joint_names) -> np.ndarray:
    """(V, J) weights by joint name."""
    column = {group.index: joint_names.index(group.name) for group in mesh_obj.vertex_groups}
    weights = np.zeros((len(mesh_obj.data.vertices), len(joint_names)))
    for vertex in mesh_obj.data.vertices:
        for element in vertex.groups:
            weights[vertex.index, column[element.group]] = element.weight
    return weights


def build_two_characters():
    blender_support.reset_scene()
    body = load_body_model("anny-hand")
    characters = []
    for seed, name in enumerate(("Left hand fit", "Right hand fit")):
        description = character_description(body, random_params(body, seed=seed))
        frame = placement(angle=seed, location=(seed, 0, 0)) @ description["model_to_zup"]
        characters.append(build_character(name, description, shape_as_keys=True, frame_matrix=frame))
    return body, characters


@pytest.mark.parametrize("file_format,preset", [("FBX", "BLENDER"), ("FBX", "UNITY"), ("FBX", "UNREAL"), ("GLB", "BLENDER")])
def test_round_trip_keeps_bones_weights_and_pose(file_format, preset, tmp_path):
    body, characters = build_two_characters()
    before = {bpy.path.clean_name(arm.name): (blender_support.evaluated_world_vertices(mesh), skin_matrix(mesh, body.joint_names))
              for arm, mesh in characters}  # fmt: skip
    files = export_characters([arm for arm, _ in characters], tmp_path, file_format, preset)
    assert [f.name for f in files] == [f"{bpy.path.clean_name(arm.name)}.{file_format.lower()}" for arm, _ in characters]

    for path in files:
        blender_support.reset_scene()
        if file_format == "FBX":
            bpy.ops.import_scene.fbx(filepath=str(path))
        else:
            bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
        armatures = [o for o in bpy.data.objects if o.type == "ARMATURE"]
        meshes = [o for o in bpy.data.objects if o.type == "MESH"]
        assert len(armatures) == len(meshes) == 1
        assert len(armatures[0].data.bones) == body.joint_count
        vertices, weights = before[path.stem]
        assert len(meshes[0].data.vertices) == body.vertex_count
        assert np.abs(skin_matrix(meshes[0], body.joint_names) - weights).max() < 1e-4
        error = np.abs(blender_support.evaluated_world_vertices(meshes[0]) - vertices).max()
        assert error < 1e-3, f"{path.name}: re-imported pose differs by {error * 1000:.3f} mm"


def test_unreal_refuses_an_armature_named_armature(tmp_path):
    _, [(armature, _), _] = build_two_characters()
    armature.name = "Armature"
    with pytest.raises(ExportError, match="Unreal"):
        export_characters([armature], tmp_path, "FBX", "UNREAL")
    assert not list(tmp_path.iterdir())
