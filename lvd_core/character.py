"""What a DCC tool needs to build a rigged, posed, shaped character from a fit, as plain numpy arrays.

Blender (or any other exporter) only builds from this description; every number is computed here, so the
headless CLI and the Blender extension make the same character. The description is in a Z-up frame (the
model's own axes rotated so its up axis is +Z); `model_to_zup` and `fit_transform` say how to place it.
"""

from __future__ import annotations

import numpy as np
import torch

from .body.base import BodyModel, BodyParams, axis_angle_to_matrix, skinning_transforms

# Skinning weights below this are dropped (and each vertex's remaining weights renormalised).
MIN_SKIN_WEIGHT = 1e-4
# A pose-corrective shape key is only worth making when the correctives move some vertex this far (metres).
MIN_CORRECTIVE = 1e-6
# Leaf bones have no child to point at: they continue their parent's direction at this fraction of its length.
LEAF_LENGTH_FRACTION = 0.5
# Children closer than this to their parent's head (e.g. Anny's root and pelvis) give the parent no direction.
MIN_BONE_LENGTH = 1e-3
ROOT_ONLY_LENGTH = 0.1  # a childless root (not in any model we ship, but kept well-defined)

_UP_TO_ZUP = {"z": np.eye(3), "y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])}  # +90 degrees about X


def model_to_zup_matrix(up_axis: str) -> np.ndarray:
    """(4, 4) rotation taking the model's axes to Z-up ones (Blender's)."""
    out = np.eye(4)
    out[:3, :3] = _UP_TO_ZUP[up_axis]
    return out


def sparse_skinning(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense (V, J) weights -> (vertex index, joint index, weight) of the weights above MIN_SKIN_WEIGHT, each
    vertex's weights renormalised to sum to 1 (so every consumer deforms exactly alike)."""
    kept = np.where(weights > MIN_SKIN_WEIGHT, weights, 0.0)
    kept = kept / kept.sum(1, keepdims=True)
    vertex, joint = np.nonzero(kept)
    return vertex, joint, kept[vertex, joint]


def bone_tails(heads: np.ndarray, parents: np.ndarray, directions: np.ndarray | None) -> np.ndarray:
    """(J, 3) bone tails. Length: the distance to the first child head that is not at the bone's own head;
    direction: the model's bone direction when given (its frame's Y column), else towards that child. Bones
    without such a child continue their parent's direction at LEAF_LENGTH_FRACTION of its length."""
    tails = np.zeros_like(heads)
    lengths = np.zeros(len(heads))
    for j in range(len(heads)):  # parents precede children
        offsets = heads[parents == j] - heads[j]
        reach = np.linalg.norm(offsets, axis=1)
        apart = np.flatnonzero(reach > MIN_BONE_LENGTH)
        parent = parents[j]
        if len(apart):
            lengths[j] = reach[apart[0]]
            toward_child = offsets[apart[0]] / lengths[j]
        elif parent >= 0:
            lengths[j] = LEAF_LENGTH_FRACTION * lengths[parent]
            toward_child = (tails[parent] - heads[parent]) / lengths[parent]
        else:
            lengths[j], toward_child = ROOT_ONLY_LENGTH, np.array([0.0, 0.0, 1.0])
        tails[j] = heads[j] + lengths[j] * (directions[j] if directions is not None else toward_child)
    return tails


def _rest_with_correctives(body: BodyModel, params: BodyParams, rest_joints: torch.Tensor, skin) -> np.ndarray:
    """(V, 3) the rest mesh that linear blend skinning with `skin` weights poses into exactly the model's
    posed mesh: the fitted rest mesh plus the model's pose correctives (SMPL/MANO) at this pose.
    Found by inverting each vertex's blended skinning transform."""
    out = body(params)
    scale, translation = params.scale.double(), params.translation.double()
    posed = (out.vertices.double() - translation[:, None]) / scale[:, None]
    joints = (out.joints.double() - translation[:, None]) / scale[:, None]
    transforms = skinning_transforms(rest_joints.double(), joints, out.joint_rotations.double())[0].numpy()
    vertex, joint, weight = skin
    blended = np.zeros((body.vertex_count, 3, 4))
    np.add.at(blended, vertex, weight[:, None, None] * transforms[joint])
    rhs = posed[0].numpy() - blended[:, :, 3]
    return np.linalg.solve(blended[:, :, :3], rhs[..., None])[..., 0]


@torch.no_grad()
def character_description(body: BodyModel, params: BodyParams) -> dict:
    """Everything needed to build the fitted character (batch of one) as a rigged mesh, in a Z-up frame:

    body_name, joint_names, parents (J,), faces (F, 3),
    bone_heads, bone_tails (J, 3) and bone_z_axes (J, 3) or None (the bone roll: None keeps the tool's default),
    skin: (vertex index, joint index, weight) arrays, renormalised,
    rest_vertices (V, 3) the fitted rest mesh; neutral_vertices (V, 3) the model's neutral rest mesh;
    shape_keys: list of (name, offsets (V, 3) from neutral_vertices, value); their sum times the values is
        rest_vertices - neutral_vertices (one key per beta for linear models, one "LVD_shape" otherwise),
    pose_correctives (V, 3) rest-space offsets reproducing the model's pose correctives, or None,
    local_rotations (J, 3, 3) each joint's rotation relative to its parent (the root's is global),
    model_to_zup (4, 4) the model's axes to Z-up; fit_transform (4, 4) scale then translation, model axes,
    params (dict of lists), shape_names, shape_values.
    """
    params = params.to(device=body.device, dtype=body.dtype).index(0)
    up = _UP_TO_ZUP[body.up_axis]
    as_zup = lambda points: np.asarray(points, dtype=np.float64) @ up.T  # noqa: E731

    rest_joints = body.rest_joints(params.shape)
    heads = as_zup(rest_joints[0])
    frames = body.rest_bone_orientations(params.shape)
    frames = None if frames is None else up @ frames[0].double().cpu().numpy()
    tails = bone_tails(heads, body.parents, None if frames is None else frames[..., 1])

    skin = sparse_skinning(body.skinning_weights.double().cpu().numpy())
    rest = body.rest_vertices(params.shape)[0].double().cpu().numpy()
    neutral_shape = body.default_shape()[None]
    neutral = body.rest_vertices(neutral_shape)[0].double().cpu().numpy()
    shape_values = params.shape[0].double().cpu().numpy()
    if body.shape_bounds is None:  # linear shape space: one key per shape coefficient
        shape_keys = []
        for k, name in enumerate(body.shape_names):
            unit = neutral_shape.clone()
            unit[0, k] += 1.0
            offsets = body.rest_vertices(unit)[0].double().cpu().numpy() - neutral
            shape_keys.append((name, as_zup(offsets), float(shape_values[k])))
    else:
        shape_keys = [("LVD_shape", as_zup(rest - neutral), 1.0)]

    correctives = _rest_with_correctives(body, params, rest_joints, skin) - rest
    has_correctives = np.abs(correctives).max() > MIN_CORRECTIVE

    fit_transform = np.eye(4)
    fit_transform[:3, :3] *= float(params.scale[0, 0])
    fit_transform[:3, 3] = params.translation[0].double().cpu().numpy()
    local = axis_angle_to_matrix(params.full_pose.double())[0].cpu().numpy()
    return {
        "body_name": body.name,
        "joint_names": list(body.joint_names),
        "parents": np.asarray(body.parents, dtype=np.int64),
        "faces": np.asarray(body.faces, dtype=np.int64),
        "bone_heads": heads,
        "bone_tails": tails,
        "bone_z_axes": None if frames is None else frames[..., 2],
        "skin": skin,
        "rest_vertices": as_zup(rest),
        "neutral_vertices": as_zup(neutral),
        "shape_keys": shape_keys,
        "pose_correctives": as_zup(correctives) if has_correctives else None,
        "local_rotations": up @ local @ up.T,
        "model_to_zup": model_to_zup_matrix(body.up_axis),
        "fit_transform": fit_transform,
        "params": {k: v[0].tolist() for k, v in params.to_numpy().items()},
        "shape_names": list(body.shape_names),
        "shape_values": shape_values.tolist(),
    }
