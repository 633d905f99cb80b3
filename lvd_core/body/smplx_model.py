"""SMPL-X (body, jaw, eyes and both hands: 10,475 vertices, 55 joints) from the user's file.

smplx's SMPLX loader always unpickles the file itself (the .npz with allow_pickle=True), so we read the arrays
with the same allow-listing reader as SMPL and MANO and evaluate the model here: shape blend, joints regressed
from the shaped rest mesh, pose correctives, then the shared kinematics and skinning of `base.py`. Posing only a
vertex subset costs only that subset, which the transfer fit relies on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import BodyModel, BodyModelError, BodyOutput, BodyParams, axis_angle_to_matrix
from .smpl_model import SMPL_JOINT_NAMES, read_model_arrays

_HAND_NAMES = ["index", "middle", "pinky", "ring", "thumb"]
SMPLX_JOINT_NAMES = (
    SMPL_JOINT_NAMES[:22]
    + ["jaw", "left_eye_smplhf", "right_eye_smplhf"]
    + [f"{side}_{finger}{k}" for side in ("left", "right") for finger in _HAND_NAMES for k in (1, 2, 3)]
)  # the 55 joints in smplx's order (its JOINT_NAMES)
EXPRESSION_COUNT = 10  # expression directions the files carry after their shape ones (v1.0 files: 10 and 10)
SHAPE_SPACE = 300  # v1.1 files: 300 shape directions, then 100 expression directions


def shape_and_expression_dirs(shapedirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split an SMPL-X shapedirs (V, 3, K) into its shape part and its expression part (the layouts of v1.0,
    K = 20, and v1.1, K = 400)."""
    shapedirs = np.asarray(shapedirs)
    start = SHAPE_SPACE if shapedirs.shape[-1] > SHAPE_SPACE else shapedirs.shape[-1] // 2
    return shapedirs[..., :start], shapedirs[..., start : start + EXPRESSION_COUNT]


class CorrectiveLBSBody(BodyModel):
    """An SMPL-family model evaluated here: shape blend, joints regressed from the shaped rest mesh, pose
    correctives, then the shared kinematics and skinning (smplx's lbs, step for step). Posing a vertex subset
    costs only that subset.

    template (V, 3), shapedirs (V, 3, S), posedirs (V, 3, 9 (J - 1)), regressor (J, V), weights (V, J) as float
    arrays or tensors; parents (J,) with -1 at the root.
    """

    def __init__(self, name, up_axis, faces, joint_names, parents, template, shapedirs, posedirs, regressor, weights):
        super().__init__()
        self.name, self.up_axis = name, up_axis
        self.faces = np.asarray(faces, dtype=np.int64)
        self.joint_names = list(joint_names)
        self.parents = np.asarray(parents, dtype=np.int64)
        self.shape_names = [f"beta{i}" for i in range(shapedirs.shape[-1])]
        self.shape_bounds = None
        self._init_tree()
        as_tensor = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float32)  # noqa: E731
        template, shapedirs, regressor = as_tensor(template), as_tensor(shapedirs), as_tensor(regressor)
        self.register_buffer("v_template", template)
        self.register_buffer("shapedirs", shapedirs)
        self.register_buffer("posedirs", as_tensor(posedirs))
        self.register_buffer("J_regressor", regressor)
        # Joints are linear in the betas: regress the template and the directions once.
        self.register_buffer("joint_template", regressor @ template)  # (J, 3)
        self.register_buffer("joint_shapedirs", torch.einsum("jv,vcs->jcs", regressor, shapedirs))  # (J, 3, S)
        self.register_buffer("skinning_weights", as_tensor(weights))

    @classmethod
    def twin_of(cls, body: BodyModel) -> "CorrectiveLBSBody":
        """The same model as an smplx-backed one (lvd_core.body.smpl_model.SMPLFamilyBody), from its buffers."""
        layer = body.layer
        vertex_count = layer.v_template.shape[0]
        posedirs = layer.posedirs.T.reshape(vertex_count, 3, -1)  # smplx keeps them as (9 (J - 1), 3 V)
        twin = cls(body.name, body.up_axis, body.faces, body.joint_names, body.parents, layer.v_template.cpu(),
                   layer.shapedirs.cpu(), posedirs.cpu(), layer.J_regressor.cpu(), layer.lbs_weights.cpu())  # fmt: skip
        return twin.to(device=body.device, dtype=body.dtype)

    def rest_vertices(self, shape: Tensor) -> Tensor:
        return self.v_template + torch.einsum("vcs,bs->bvc", self.shapedirs, shape)

    def rest_joints(self, shape: Tensor) -> Tensor:
        return self.joint_template + torch.einsum("jcs,bs->bjc", self.joint_shapedirs, shape)

    def _posed(self, params: BodyParams, vertex_ids: Tensor | None = None) -> BodyOutput:
        """Shape blend and pose correctives on the vertices asked for, then the shared skinning."""
        template, shapedirs, posedirs = self.v_template, self.shapedirs, self.posedirs
        if vertex_ids is not None:
            template, shapedirs, posedirs = template[vertex_ids], shapedirs[vertex_ids], posedirs[vertex_ids]
        eye = torch.eye(3, dtype=self.dtype, device=self.device)
        pose_features = (axis_angle_to_matrix(params.joint_pose) - eye).flatten(1)  # (B, 9 (J - 1))
        rest = (
            template
            + torch.einsum("vcs,bs->bvc", shapedirs, params.shape)
            + torch.einsum("vck,bk->bvc", posedirs, pose_features)
        )
        return self._skin(rest, self.rest_joints(params.shape), params.full_pose, vertex_ids)


class SMPLXBody(CorrectiveLBSBody):
    """SMPL-X from the user's SMPLX_{NEUTRAL,MALE,FEMALE}.npz or .pkl (Y-up, metres).

    shape: the first `num_betas` betas (unbounded; ~N(0, 1)); the face keeps its neutral expression.
    Pose: 55 joints (SMPLX_JOINT_NAMES): body 0-21, jaw, eyes, then 15 per hand. Hand joints take their
    rotations as given (smplx's flat_hand_mean=True, no PCA). Pose correctives are applied.
    """

    def __init__(self, path: str | Path, *, num_betas: int = 10):
        arrays = read_model_arrays(path, "smplx")
        betas_dirs, _ = shape_and_expression_dirs(arrays["shapedirs"])
        kintree = np.asarray(arrays["kintree_table"], dtype=np.int64)
        joint_count = kintree.shape[1]
        if joint_count != len(SMPLX_JOINT_NAMES):
            raise BodyModelError(f"{path} has {joint_count} joints, an SMPL-X model has {len(SMPLX_JOINT_NAMES)}")
        parents = np.where(kintree[0] >= joint_count, -1, kintree[0])  # the root's parent is stored as 2**32 - 1
        parents[0] = -1
        super().__init__(
            "smplx", "y", arrays["f"], SMPLX_JOINT_NAMES, parents, arrays["v_template"],
            betas_dirs[..., :num_betas], arrays["posedirs"], arrays["J_regressor"], arrays["weights"],
        )  # fmt: skip
