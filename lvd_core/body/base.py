"""The one body-model interface every part of LVD uses (descent, fit, training, Blender).

Conventions shared by all backends:
- Units are metres. `up_axis` says which model axis points up ("z" for Anny, "y" for SMPL and MANO).
- Pose is SMPL-style: joint j's rotation `R_j` (axis-angle) is expressed in the model's rest axes relative to
  its parent, so the global rotation is `G_j = G_parent(j) @ R_j`; the root's rotation is `global_orient`.
  Every joint rotates about its own rest head. Posed vertices are linear blend skinning of the rest mesh.
- `scale` (uniform, about the model origin) and then `translation` are applied last:
  `v = scale * v_posed + translation`. Scale lets one body fit inputs of any size (e.g. unitless hand scans).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor


@dataclass
class BodyParams:
    """A batch of body-model parameters (all tensors share batch size B, device and dtype).

    global_orient: (B, 3) axis-angle of the root joint.
    joint_pose:    (B, J-1, 3) axis-angle of every other joint, relative to its parent, in rest axes.
    shape:         (B, S) the model's shape vector (Anny phenotypes in [0, 1]; SMPL/MANO betas).
    translation:   (B, 3) metres, added last.
    scale:         (B, 1) uniform scale about the model origin, applied before translation.
    """

    global_orient: Tensor
    joint_pose: Tensor
    shape: Tensor
    translation: Tensor
    scale: Tensor

    @property
    def batch_size(self) -> int:
        return self.global_orient.shape[0]

    @property
    def full_pose(self) -> Tensor:
        """(B, J, 3): the root's axis-angle followed by every other joint's."""
        return torch.cat([self.global_orient[:, None], self.joint_pose], dim=1)

    def to(self, device=None, dtype=None) -> "BodyParams":
        return BodyParams(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def detach(self) -> "BodyParams":
        return BodyParams(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def index(self, i: int | slice) -> "BodyParams":
        """The sub-batch `i` (a single index keeps a batch dimension of 1)."""
        sel = slice(i, i + 1) if isinstance(i, int) else i
        return BodyParams(**{f.name: getattr(self, f.name)[sel] for f in fields(self)})

    @staticmethod
    def concatenate(params: list["BodyParams"]) -> "BodyParams":
        return BodyParams(**{f.name: torch.cat([getattr(p, f.name) for p in params]) for f in fields(BodyParams)})

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    @staticmethod
    def from_numpy(arrays: dict, device=None, dtype=torch.float32) -> "BodyParams":
        return BodyParams(
            **{f.name: torch.as_tensor(np.asarray(arrays[f.name]), device=device, dtype=dtype) for f in fields(BodyParams)}
        )

    def with_(self, **changes) -> "BodyParams":
        return replace(self, **changes)


@dataclass
class BodyOutput:
    """vertices (B, V, 3) and joints (B, J, 3) posed, in metres; joint_rotations (B, J, 3, 3) the global rotation
    G_j of every joint relative to its rest orientation (what a Blender pose bone needs)."""

    vertices: Tensor
    joints: Tensor
    joint_rotations: Tensor


# ---------------------------------------------------------------------------------------------------------
# The maths, one small step per function (shapes in the docstrings).


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues' formula, differentiable at zero. rotvec (..., 3) -> rotation matrices (..., 3, 3)."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    angle = torch.sqrt(angle_sq.clamp_min(1e-12))
    small = angle_sq < 1e-8
    # Taylor series near zero keeps the gradient finite.
    sin_over = torch.where(small, 1.0 - angle_sq / 6.0, torch.sin(angle) / angle)
    one_minus_cos_over = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / angle_sq.clamp_min(1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye + sin_over * skew + one_minus_cos_over * (skew @ skew)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), exact also near 180 degrees (via quaternions)."""
    import roma

    return roma.rotmat_to_rotvec(matrix)


def kinematic_levels(parents: np.ndarray) -> list[np.ndarray]:
    """Group joints by depth in the tree so each level is posed in one batched step.
    parents (J,) with -1 at the root -> list of index arrays, root level first."""
    depth = np.zeros(len(parents), dtype=np.int64)
    for j, p in enumerate(parents):
        depth[j] = 0 if p < 0 else depth[p] + 1  # parents precede children in every model we load
    return [np.flatnonzero(depth == d) for d in range(depth.max() + 1)]


def global_rotations(local_rotations: Tensor, parents: np.ndarray, levels: list[np.ndarray]) -> Tensor:
    """G_j = G_parent(j) @ R_j. local_rotations (B, J, 3, 3) -> (B, J, 3, 3)."""
    out = [None] * local_rotations.shape[1]
    root = levels[0]
    for j in root:
        out[j] = local_rotations[:, j]
    for level in levels[1:]:
        parent_rot = torch.stack([out[parents[j]] for j in level], dim=1)
        posed = parent_rot @ local_rotations[:, level]
        for k, j in enumerate(level):
            out[j] = posed[:, k]
    return torch.stack(out, dim=1)


def posed_joints(rest_joints: Tensor, rotations: Tensor, parents: np.ndarray, levels: list[np.ndarray]) -> Tensor:
    """p_j = p_parent + G_parent (J_j - J_parent), the root staying at its rest head.
    rest_joints (B, J, 3), rotations G (B, J, 3, 3) -> (B, J, 3)."""
    out = [None] * rest_joints.shape[1]
    for j in levels[0]:
        out[j] = rest_joints[:, j]
    for level in levels[1:]:
        par = parents[level]
        offsets = rest_joints[:, level] - rest_joints[:, par]  # (B, L, 3)
        moved = (rotations[:, par] @ offsets[..., None])[..., 0]
        parent_pos = torch.stack([out[p] for p in par], dim=1)
        for k, j in enumerate(level):
            out[j] = parent_pos[:, k] + moved[:, k]
    return torch.stack(out, dim=1)


def skinning_transforms(rest_joints: Tensor, posed: Tensor, rotations: Tensor) -> Tensor:
    """Per-joint affine maps taking rest positions to posed ones: x -> G_j x + (p_j - G_j J_j).
    rest_joints, posed (B, J, 3), rotations (B, J, 3, 3) -> (B, J, 3, 4)."""
    offset = posed - (rotations @ rest_joints[..., None])[..., 0]
    return torch.cat([rotations, offset[..., None]], dim=-1)


def linear_blend_skinning(rest_vertices: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """rest_vertices (B, V, 3), dense weights (V, J), transforms (B, J, 3, 4) -> posed vertices (B, V, 3)."""
    blended = torch.einsum("vj,bjk->bvk", weights, transforms.flatten(2)).unflatten(-1, (3, 4))  # (B, V, 3, 4)
    return (blended[..., :3] @ rest_vertices[..., None])[..., 0] + blended[..., 3]


# ---------------------------------------------------------------------------------------------------------


class BodyModel(torch.nn.Module):
    """Base class of every backend. Subclasses fill the static description in __init__ and implement
    `rest_vertices`, `rest_joints` and `_posed` (the pose without scale and translation)."""

    name: str
    up_axis: str
    faces: np.ndarray  # (F, 3) int64 triangles
    joint_names: list[str]
    parents: np.ndarray  # (J,) int64, -1 at the root; parents precede children
    shape_names: list[str]
    shape_bounds: tuple[float, float] | None  # e.g. (0, 1) for Anny phenotypes; None = unbounded (betas)

    def _init_tree(self) -> None:
        self.levels = kinematic_levels(self.parents)

    # -- static description ------------------------------------------------------------------------
    @property
    def vertex_count(self) -> int:
        return int(self.skinning_weights.shape[0])

    @property
    def joint_count(self) -> int:
        return len(self.joint_names)

    @property
    def shape_size(self) -> int:
        return len(self.shape_names)

    @property
    def dtype(self) -> torch.dtype:
        return self.skinning_weights.dtype

    @property
    def device(self) -> torch.device:
        return self.skinning_weights.device

    skinning_weights: Tensor  # (V, J) dense, rows summing to 1 (a registered buffer in subclasses)

    def default_shape(self) -> Tensor:
        """(S,) the neutral shape (0.5 phenotypes for Anny, zero betas for SMPL/MANO)."""
        return torch.zeros(self.shape_size, dtype=self.dtype, device=self.device)

    def parameter_layout(self) -> dict[str, tuple[int, ...]]:
        """Names and per-sample shapes of the parameters, in the order of `BodyParams`."""
        return {
            "global_orient": (3,),
            "joint_pose": (self.joint_count - 1, 3),
            "shape": (self.shape_size,),
            "translation": (3,),
            "scale": (1,),
        }

    def zero_params(self, batch_size: int = 1) -> BodyParams:
        """Rest pose, neutral shape, no translation, unit scale."""
        kw = dict(dtype=self.dtype, device=self.device)
        return BodyParams(
            global_orient=torch.zeros(batch_size, 3, **kw),
            joint_pose=torch.zeros(batch_size, self.joint_count - 1, 3, **kw),
            shape=self.default_shape().expand(batch_size, -1).clone(),
            translation=torch.zeros(batch_size, 3, **kw),
            scale=torch.ones(batch_size, 1, **kw),
        )

    # -- shape -------------------------------------------------------------------------------------
    def rest_vertices(self, shape: Tensor) -> Tensor:
        """shape (B, S) -> rest mesh (B, V, 3)."""
        raise NotImplementedError

    def rest_joints(self, shape: Tensor) -> Tensor:
        """shape (B, S) -> rest joint positions (bone heads) (B, J, 3)."""
        raise NotImplementedError

    def rest_bone_orientations(self, shape: Tensor) -> Tensor | None:
        """(B, J, 3, 3) the model's own rest frame of every bone (columns: bone X, Y along the bone, Z), for
        building armatures; None when the model has none (the armature builder then points Y at the child)."""
        return None

    # -- pose --------------------------------------------------------------------------------------
    def forward(self, params: BodyParams, vertex_ids: Tensor | None = None) -> BodyOutput:
        """Posed, scaled and translated body. Differentiable in every parameter.
        vertex_ids (N,): compute only these vertices (vertices then (B, N, 3)); all when None."""
        out = self._posed(params, vertex_ids)
        s = params.scale[:, None, :]
        t = params.translation[:, None, :]
        return BodyOutput(vertices=out.vertices * s + t, joints=out.joints * s + t, joint_rotations=out.joint_rotations)

    def _posed(self, params: BodyParams, vertex_ids: Tensor | None = None) -> BodyOutput:
        """The generic LBS path (no pose correctives); backends with correctives override it."""
        rest_v = self.rest_vertices(params.shape)
        if vertex_ids is not None:
            rest_v = rest_v[:, vertex_ids]
        return self._skin(rest_v, self.rest_joints(params.shape), params.full_pose, vertex_ids)

    def _skin(self, rest_v: Tensor, rest_j: Tensor, full_pose: Tensor, vertex_ids: Tensor | None = None) -> BodyOutput:
        """rest mesh (B, N, 3) (the vertices `vertex_ids`, or all), rest joints (B, J, 3), axis-angles (B, J, 3)
        -> posed body (no scale/translation)."""
        local = axis_angle_to_matrix(full_pose)
        rot = global_rotations(local, self.parents, self.levels)
        joints = posed_joints(rest_j, rot, self.parents, self.levels)
        transforms = skinning_transforms(rest_j, joints, rot)
        weights = self.skinning_weights if vertex_ids is None else self.skinning_weights[vertex_ids]
        vertices = linear_blend_skinning(rest_v, weights, transforms)
        return BodyOutput(vertices=vertices, joints=joints, joint_rotations=rot)

    def mirror_twins(self, tolerance: float = 1e-3) -> np.ndarray | None:
        """(V,) int64: each vertex's left-right twin (its rest position with x negated), or None when the rest
        mesh is not symmetric about x = 0 within `tolerance` metres (a single hand). Kept per tolerance: ~0.4 s
        to find, and every fit asks (the models are cached per process)."""
        from scipy.spatial import cKDTree

        known = self.__dict__.setdefault("_mirror_twins", {})
        if tolerance not in known:
            rest = self(self.zero_params(1)).vertices[0].detach().cpu().double().numpy()
            distance, twins = cKDTree(rest).query(rest * [-1.0, 1.0, 1.0], k=1)
            known[tolerance] = twins.astype(np.int64) if distance.max() <= tolerance else None
        return known[tolerance]

    def descendants(self, joint: int) -> list[int]:
        """`joint` and every joint below it in the tree."""
        out = [joint]
        for j in range(joint + 1, self.joint_count):
            if self.parents[j] in out:
                out.append(j)
        return out

    def landmark_regressor(self) -> tuple[Tensor, list[str]] | None:
        """Anatomical landmarks as fixed blends of the posed vertices: weights (L, V) (rows summing to 1, on the
        model's device and dtype) and the landmarks' names in the COCO keypoints' spelling ("nose",
        "left_shoulder", ... "left_big_toe", "left_heel"; left is the person's left). None when the model has none."""
        return None


class BodyModelError(ValueError):
    """A body model could not be loaded; the message says what is wrong and how to fix it."""
