"""The armature builder: the deformed Blender mesh equals lvd_core's posed body (through frame_matrix)."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import numpy as np
import pytest
import torch

from lvd_blender.character import build_character
from lvd_core.body import load_body_model
from lvd_core.character import character_description
from synthetic_models import make_model_arrays, write_official_pickle


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "smpl": write_official_pickle(make_model_arrays("smpl"), folder / "SMPL_NEUTRAL.pkl"),
        "mano": write_official_pickle(make_model_arrays("mano"), folder / "MANO_RIGHT.pkl", select_shapedirs=True),
    }


def random_params(body, seed=0, angle=0.3):
    g = torch.Generator().manual_seed(seed)
    p = body.zero_params(1)
    p.global_orient = angle * torch.randn(1, 3, generator=g)
    p.joint_pose = angle * torch.randn(p.joint_pose.shape, generator=g)
    p.shape = torch.rand(p.shape.shape, generator=g) if body.shape_bounds else torch.randn(p.shape.shape, generator=g)
    p.translation = torch.randn(1, 3, generator=g)
    p.scale = 1 + 0.1 * torch.rand(1, 1, generator=g)
    return p


def placement(angle=0.7, scale=1.0, location=(1.0, -2.0, 0.5)):
    """A frame_matrix: rotation about Z, uniform scale, location."""
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.eye(4)
    matrix[:3, :3] = scale * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    matrix[:3, 3] = location
    return matrix


CASES = [  # body model, shape as shape keys
    ("anny", False),
    ("anny", True),
    ("anny-hand", False),
    ("smpl", False),
    ("smpl", True),
    ("mano", True),
]


@pytest.mark.parametrize("name,shape_as_keys", CASES)
def test_deformed_mesh_equals_the_model(name, shape_as_keys, model_files):
    blender_support.reset_scene()
    body = load_body_model(name, model_files.get(name))
    params = random_params(body)
    description = character_description(body, params)
    frame = placement() @ description["model_to_zup"]  # the model upright, then turned and moved
    armature_obj, mesh_obj = build_character(
        "Fitted", description, shape_as_keys=shape_as_keys, frame_matrix=frame, residual_mm=1.5
    )
    expected = body(params).vertices[0].double().numpy() @ frame[:3, :3].T + frame[:3, 3]
    error = np.abs(blender_support.evaluated_world_vertices(mesh_obj) - expected).max()
    assert error < 1e-3, f"{name}: deformed mesh differs from the model by {error * 1000:.3f} mm"

    bones = armature_obj.data.bones
    assert sorted(b.name for b in bones) == sorted(body.joint_names)
    assert all(not b.use_connect for b in bones)
    heads = np.array([bones[joint].head_local for joint in body.joint_names])
    assert np.abs(heads - float(params.scale) * description["bone_heads"]).max() < 1e-5  # the fit's scale, baked in
    assert np.allclose(armature_obj.scale, 1.0) and np.allclose(mesh_obj.scale, 1.0)
    assert len(mesh_obj.vertex_groups) == body.joint_count
    assert mesh_obj.modifiers["Armature"].object == armature_obj
    assert armature_obj.users_collection[0].name == "Fitted"
    assert armature_obj["lvd_body_model"] == body.name and armature_obj["lvd_residual_mm"] == 1.5
    keys = mesh_obj.data.shape_keys
    if shape_as_keys:
        assert keys.key_blocks[1].name == ("LVD_shape" if name.startswith("anny") else "beta0")
        assert np.isclose(keys.key_blocks[1].value, description["shape_keys"][0][2], atol=1e-6)
    if name in ("smpl", "mano"):
        assert keys.key_blocks[-1].name == "LVD_pose_correctives"


def test_default_frame_stands_the_model_up(model_files):
    blender_support.reset_scene()
    body = load_body_model("smpl", model_files["smpl"])
    params = body.zero_params(1)
    _, mesh_obj = build_character("Standing", character_description(body, params))
    world = blender_support.evaluated_world_vertices(mesh_obj)
    model = body(params).vertices[0].double().numpy()
    assert np.abs(world - model @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T).max() < 1e-5  # Y-up -> Z-up
