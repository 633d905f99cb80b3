"""The rigged characters of the transfer's models in Blender: SMPL-X (and the stand-in SMPL and MANO) built,
exported as FBX and GLB and read back with the same bones and pose."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import bpy
import numpy as np
import pytest

from lvd_blender.character import build_character
from lvd_blender.export import export_characters
from lvd_core.body import load_body_model
from lvd_core.character import character_description
from lvd_core.synth.standins import FILE_NAMES, standin_arrays
from test_blender_character import placement, random_params


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The stand-ins with small random pose correctives, so the characters carry them too."""
    folder = tmp_path_factory.mktemp("standins")
    files = {}
    for kind in ("smplx", "smpl", "mano-right"):
        arrays = standin_arrays(kind)
        arrays["posedirs"] = 1e-3 * np.random.default_rng(0).normal(size=arrays["posedirs"].shape)
        files[kind] = folder / FILE_NAMES[kind]
        np.savez(files[kind], **arrays)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["smplx", "smpl", "mano-right"])
def test_standin_character_round_trips(kind, model_files, tmp_path):
    blender_support.reset_scene()
    body = load_body_model(kind, model_files[kind])
    params = random_params(body, seed=2, angle=0.2)
    description = character_description(body, params)
    frame = placement() @ description["model_to_zup"]
    armature_obj, mesh_obj = build_character("Fitted", description, shape_as_keys=True, frame_matrix=frame)
    expected = body(params).vertices[0].detach().double().numpy() @ frame[:3, :3].T + frame[:3, 3]
    assert np.abs(blender_support.evaluated_world_vertices(mesh_obj) - expected).max() < 1e-3
    assert sorted(b.name for b in armature_obj.data.bones) == sorted(body.joint_names)
    assert mesh_obj.data.shape_keys.key_blocks[-1].name == "LVD_pose_correctives"

    for file_format in ("FBX", "GLB"):
        (path,) = export_characters([armature_obj], tmp_path, file_format)
        blender_support.reset_scene()
        if file_format == "FBX":
            bpy.ops.import_scene.fbx(filepath=str(path))
        else:
            bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
        (armature,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
        (mesh,) = [o for o in bpy.data.objects if o.type == "MESH"]
        assert len(armature.data.bones) == body.joint_count and len(mesh.data.vertices) == body.vertex_count
        error = np.abs(blender_support.evaluated_world_vertices(mesh) - expected).max()
        assert error < 1e-3, f"{kind} {file_format}: re-imported pose differs by {error * 1000:.3f} mm"
        blender_support.reset_scene()
        armature_obj, mesh_obj = build_character("Fitted", description, shape_as_keys=True, frame_matrix=frame)
