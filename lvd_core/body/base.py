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


def skew_matrix(vector: Tensor) -> Tensor:
    """[v]x, the matrix of the cross product with v: (..., 3) -> (..., 3, 3)."""
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vector.shape[:-1], 3, 3)


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues' formula, differentiable at zero. rotvec (..., 3) -> rotation matrices (..., 3, 3)."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    angle = torch.sqrt(angle_sq.clamp_min(1e-12))
    small = angle_sq < 1e-8
    # Taylor series near zero keeps the gradient finite.
    sin_over = torch.where(small, 1.0 - angle_sq / 6.0, torch.sin(angle) / angle)
    one_minus_cos_over = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / angle_sq.clamp_min(1e-12))
    skew = skew_matrix(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye + sin_over * skew + one_minus_cos_over * (skew @ skew)


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), exact also near 180 degrees (via quaternions)."""
    from .roma_import import import_roma

    return import_roma().rotmat_to_rotvec(matrix)


def kinematic_levels(parents: np.ndarray) -> list[np.ndarray]:
    """Group joints by depth in the tree so each level is posed in one batched step.
    parents (J,) with -1 at the root -> list of index arrays, root level first."""
    depth = np.zeros(len(parents), dtype=np.int64)
    for j, p in enumerate(parents):
        depth[j] = 0 if p < 0 else depth[p] + 1  # parents precede children in every model we load
    return [np.flatnonzero(depth == d) for d in range(depth.max() + 1)]


def global_rotations(local_rotations: Tensor, parents: np.ndarray, levels: list[np.ndarray]) -> Tensor:
    """G_j = G_parent(j) @ R_j. local_rotations (B, J, 3, 3) -> (B, J, 3, 3)."""
    out = local_rotations.clone()
    for level in levels[1:]:  # one batched step per depth of the tree
        out[:, level] = out[:, parents[level]] @ local_rotations[:, level]
    return out


def posed_joints(rest_joints: Tensor, rotations: Tensor, parents: np.ndarray, levels: list[np.ndarray]) -> Tensor:
    """p_j = p_parent + G_parent (J_j - J_parent), the root staying at its rest head.
    rest_joints (B, J, 3), rotations G (B, J, 3, 3) -> (B, J, 3)."""
    out = rest_joints.clone()
    for level in levels[1:]:
        par = parents[level]
        offsets = rest_joints[:, level] - rest_joints[:, par]  # (B, L, 3)
        out[:, level] = out[:, par] + (rotations[:, par] @ offsets[..., None])[..., 0]
    return out


def skinning_transforms(rest_joints: Tensor, posed: Tensor, rotations: Tensor) -> Tensor:
    """Per-joint affine maps taking rest positions to posed ones: x -> G_j x + (p_j - G_j J_j).
    rest_joints, posed (B, J, 3), rotations (B, J, 3, 3) -> (B, J, 3, 4)."""
    offset = posed - (rotations @ rest_joints[..., None])[..., 0]
    return torch.cat([rotations, offset[..., None]], dim=-1)


def right_jacobian(rotvec: Tensor) -> Tensor:
    """SO(3)'s right Jacobian: exp(r + dr) ~ exp(r) exp(J_r(r) dr). rotvec (..., 3) -> (..., 3, 3)."""
    angle_sq = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    angle = torch.sqrt(angle_sq.clamp_min(1e-12))
    small = angle_sq < 1e-6
    # Taylor series near zero where the closed forms lose their digits.
    cos_term = torch.where(small, 0.5 - angle_sq / 24.0, (1.0 - torch.cos(angle)) / angle_sq.clamp_min(1e-12))
    sin_term = torch.where(small, 1.0 / 6.0 - angle_sq / 120.0, (angle - torch.sin(angle)) / (angle_sq * angle).clamp_min(1e-18))
    skew = skew_matrix(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye - cos_term * skew + sin_term * (skew @ skew)


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
    kind: str = "body"  # "hand" for hand models: how scans of it are sized and oriented (lvd_core.canonical)

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

    def unbounded_shape(self, shape: Tensor) -> Tensor:
        """shape (B, S) -> the same on the real line, where a fit moves it: bounded shapes (Anny phenotypes) through
        the logit of their place between the bounds (kept 1e-4 off them), unbounded ones (betas) unchanged."""
        if not self.shape_bounds:
            return shape
        lo, hi = self.shape_bounds
        unit = ((shape - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
        return torch.log(unit / (1 - unit))

    def shape_prior(self) -> tuple[Tensor, Tensor] | None:
        """The shapes people have, as a Gaussian over `unbounded_shape`: mean (S,) and square-root information
        root (S, S) (root @ root.T the inverse covariance), or None for N(0, 1) about `default_shape` (betas)."""
        return None

    def shape_restarts(self, shape: Tensor) -> Tensor | None:
        """shape (B, S) as fitted -> (K * B, S) shapes the fit restarts from once settled (restart k of item b at
        row k * B + b), to leave the shape's local minima; None: the model has none (its shape space is smooth)."""
        return None

    def shape_prior_residuals(self, shape: Tensor) -> Tensor:
        """shape (B, S) -> (B, S) residuals whose squared sum is the shape's negative log prior (up to a constant):
        (unbounded_shape - mean) @ root, or shape - default_shape under N(0, 1)."""
        prior = self.shape_prior()
        if prior is None:
            return shape - self.default_shape()
        mean, root = prior
        return (self.unbounded_shape(shape) - mean) @ root

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
        return self._skin(*self._rest(params.shape, vertex_ids), params.full_pose, vertex_ids)

    def _rest(self, shape: Tensor, vertex_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """shape (B, S) -> rest vertices `vertex_ids` (B, N, 3) (all when None) and rest joints (B, J, 3)."""
        rest_v = self.rest_vertices(shape)
        return (rest_v if vertex_ids is None else rest_v[:, vertex_ids]), self.rest_joints(shape)

    def descendant_matrix(self) -> Tensor:
        """(J, J) with [k, j] = 1 where joint j is k or below it in the tree."""
        known = self.__dict__.setdefault("_descendant_matrix", {})
        key = (self.dtype, self.device)
        if key not in known:
            matrix = torch.zeros(self.joint_count, self.joint_count, dtype=self.dtype, device=self.device)
            for k in range(self.joint_count):
                matrix[k, self.descendants(k)] = 1
            known[key] = matrix
        return known[key]

    def kept(self, what: str, make, *by: Tensor):
        """make(), kept for the last few values of the tensors `by` per `what`: a fit asks for the same rows of the
        model's tables (gathering them costs milliseconds) and the same shapes' coefficients hundreds of times."""
        kept = self.__dict__.setdefault("_kept", {}).setdefault(what, {})
        key = (str(self.dtype), *((str(t.device), t.dtype, tuple(t.shape), t.detach().cpu().numpy().tobytes()) for t in by))
        if key not in kept:
            if len(kept) >= 4:
                kept.pop(next(iter(kept)))
            kept[key] = make()
        return kept[key]

    def skinning_influences(self) -> tuple[Tensor, Tensor]:
        """Every vertex's nonzero skinning weights as (V, I) joint indices and (V, I) weights, I the most any
        vertex has (others padded with weight 0): Anny's vertices have at most 9 of 104."""
        known = self.__dict__.setdefault("_skinning_influences", {})
        key = (self.dtype, self.device)
        if key not in known:
            most = int((self.skinning_weights > 0).sum(1).max())
            weights, bones = self.skinning_weights.topk(most, dim=1)
            known[key] = (bones, weights)
        return known[key]

    def vertex_jacobian(
        self, params: BodyParams, vertex_ids: Tensor, joints: Tensor, shape_probes: Tensor | None = None,
        row_weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """Derivatives of the posed, scaled body's vertices `vertex_ids` (N,) in closed form (one skinning pass):
        in the axis-angles of `joints` (K,) (joint 0 is global_orient): (B, N, 3, K, 3); and the change towards
        each of T other shapes `shape_probes` (B, T, S) with the pose held, v(probe) - v(shape): (B, N, 3, T) (or
        None). Both times row_weights (B, N) when given (cheaper than weighting the result). Pose correctives
        (SMPL) are left out of both.

        A change dr of joint k's axis-angle turns everything below k about its posed head p_k by the world
        angular velocity w = G_k J_r(r_k) dr, so dv = s w x (sum over j below k of w_vj T_j(x_v) - W_vk p_k),
        W_vk the vertex's skinning weight below k. With the rotations held, v is linear in the rest vertices and
        joints, so a shape change is the skinning of the rest change alone."""
        rest_v, rest_j = self._rest(params.shape, vertex_ids)
        full_pose = params.full_pose
        rot = global_rotations(axis_angle_to_matrix(full_pose), self.parents, self.levels)
        heads = posed_joints(rest_j, rot, self.parents, self.levels)
        transforms = skinning_transforms(rest_j, heads, rot)  # (B, J, 3, 4)
        bones, weights = self.skinning_influences()
        bones = bones[vertex_ids]  # (N, I)
        # Each influence's transform of its vertex (B, N, I, 3), summed, weighted, over the joints below each k.
        moved_by = transforms[:, bones]  # (B, N, I, 3, 4)
        per_bone = torch.einsum("bnick,bnk->bnic", moved_by[..., :3], rest_v) + moved_by[..., 3]
        weight_below = self.kept(  # (N, I, K)
            "weight_below", lambda: weights[vertex_ids][..., None] * self.descendant_matrix()[joints].T[bones], vertex_ids, joints
        )
        arm = per_bone.transpose(2, 3) @ weight_below  # (B, N, 3, K)
        scale = params.scale[:, :, None, None]
        if row_weights is not None:
            scale = scale * row_weights[:, :, None, None]
        arm = scale * (arm - weight_below.sum(1)[None, :, None] * heads[:, joints].transpose(1, 2)[:, None])
        velocity = rot[:, joints] @ right_jacobian(full_pose[:, joints])  # (B, K, 3, 3): column m per unit dr_m
        # velocity x arm, component by component: (B, N, K, 3) for each of x, y, z
        v, a = velocity[:, None], arm[..., None]  # (B, 1, K, 3, 3), (B, N, 3, K, 1)
        moved = [v[:, :, :, (i + 1) % 3] * a[:, :, (i + 2) % 3] - v[:, :, :, (i + 2) % 3] * a[:, :, (i + 1) % 3] for i in range(3)]
        d_rotation = torch.stack(moved, dim=2)  # (B, N, 3, K, 3)
        if shape_probes is None:
            return d_rotation, None
        batch, count = shape_probes.shape[:2]
        probe_v, probe_j = self._rest(shape_probes.flatten(0, 1), vertex_ids)
        d_rest_v = probe_v.unflatten(0, (batch, count)) - rest_v[:, None]  # (B, T, N, 3)
        d_rest_j = (probe_j.unflatten(0, (batch, count)) - rest_j[:, None]).flatten(0, 1)  # (B*T, J, 3)
        d_heads = posed_joints(d_rest_j, rot.repeat_interleave(count, 0), self.parents, self.levels)
        d_offsets = (d_heads - (rot.repeat_interleave(count, 0) @ d_rest_j[..., None])[..., 0]).unflatten(0, (batch, count))
        dense = self.kept("skinning_weights", lambda: self.skinning_weights[vertex_ids], vertex_ids)  # (N, J)
        blended = torch.einsum("nj,bjk->bnk", dense, rot.flatten(2)).unflatten(-1, (3, 3))  # (B, N, 3, 3)
        d_shape = torch.einsum("bnik,btnk->bnit", blended, d_rest_v) + torch.einsum("nj,btjc->bnct", dense, d_offsets)
        return d_rotation, scale * d_shape

    def _skin(self, rest_v: Tensor, rest_j: Tensor, full_pose: Tensor, vertex_ids: Tensor | None = None) -> BodyOutput:
        """rest mesh (B, N, 3) (the vertices `vertex_ids`, or all), rest joints (B, J, 3), axis-angles (B, J, 3)
        -> posed body (no scale/translation)."""
        local = axis_angle_to_matrix(full_pose)
        rot = global_rotations(local, self.parents, self.levels)
        joints = posed_joints(rest_j, rot, self.parents, self.levels)
        transforms = skinning_transforms(rest_j, joints, rot)
        weights = self.skinning_weights if vertex_ids is None else self.kept(
            "skinning_weights", lambda: self.skinning_weights[vertex_ids], vertex_ids
        )
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
