"""SMPL and MANO from files the user brings (they are licensed and never shipped), through `smplx`.

We read the arrays ourselves (the allow-listing unpickler for .pkl, numpy for .npz) and hand them to smplx
with `data_struct=`, which sidesteps smplx's file-name guessing, its pickle-only SMPL loader and chumpy.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .base import BodyModel, BodyModelError, BodyOutput, BodyParams, axis_angle_to_matrix, global_rotations
from .safe_pickle import UnsafePickleError, load_model_pickle

SMPL_JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
]  # fmt: skip
MANO_JOINT_NAMES = [
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3", "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
]  # fmt: skip

_KINDS = {
    "smpl": dict(vertices=6890, joints=24, names=SMPL_JOINT_NAMES, site="https://smpl.is.tue.mpg.de",
                 example="basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl or SMPL_NEUTRAL.npz"),
    "mano": dict(vertices=778, joints=16, names=MANO_JOINT_NAMES, site="https://mano.is.tue.mpg.de",
                 example="MANO_RIGHT.pkl or MANO_LEFT.pkl"),
    "smplx": dict(vertices=10475, joints=55, names=None, site="https://smpl-x.is.tue.mpg.de",
                  example="SMPLX_NEUTRAL.npz or SMPLX_NEUTRAL.pkl", label="SMPL-X"),
}  # fmt: skip
_REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


def read_model_arrays(path: str | Path, kind: str) -> dict[str, object]:
    """The arrays of an SMPL/MANO file (.pkl official or cleaned, or .npz), checked to be of `kind`.
    Every problem raises BodyModelError with one line naming the file, the problem and the fix."""
    spec = _KINDS[kind]
    path = Path(path).expanduser()
    label = spec.get("label", kind.upper())
    if not path.is_file():
        raise BodyModelError(
            f"{label} model file not found: {path}. {label} is licensed and not shipped with LVD: register at "
            f"{spec['site']}, download the model ({spec['example']}) and give its path"
        )
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files if _is_plain_array(npz, key)}
        else:
            arrays = load_model_pickle(path)
    except UnsafePickleError as exc:
        raise BodyModelError(f"{path} is not an {label} model file and was refused unread: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as exc:
        raise BodyModelError(f"{path} is not a readable {label} model file (truncated or corrupt?): {exc}") from None
    missing = [key for key in _REQUIRED_KEYS if key not in arrays]
    if missing:
        raise BodyModelError(f"{path} is not an {label} model file: it lacks {', '.join(missing)}")
    vertex_count = np.asarray(arrays["v_template"]).shape[0]
    if vertex_count != spec["vertices"]:
        found = next((k for k, s in _KINDS.items() if s["vertices"] == vertex_count), None)
        hint = f"it looks like a {found.upper()} file: choose the {found} body model" if found else ""
        raise BodyModelError(
            f"{path} has {vertex_count} vertices, an {label} model has {spec['vertices']}" + (f"; {hint}" if hint else "")
        )
    return arrays


def _is_plain_array(npz, key: str) -> bool:
    """False for the pickled objects some .npz files carry (SMPL-X's joint2num, part2num): we never unpickle them
    and need none of them."""
    try:
        npz[key]
    except ValueError:
        return False
    return True


def _fix_left_mano_shapedirs(arrays: dict) -> None:
    """Some official MANO_LEFT files carry the right hand's shapedirs (smplx issue #48): their x part then
    correlates with the template against the sign of the y and z parts. Flip x when that is so."""
    v = np.asarray(arrays["v_template"], dtype=np.float64)
    d = np.asarray(arrays["shapedirs"], dtype=np.float64)[:, :, 0]  # (V, 3) first shape direction
    centred = v - v.mean(0)
    corr = (d * centred).sum(0)
    if corr[0] * (corr[1] + corr[2]) < 0:
        arrays["shapedirs"] = np.asarray(arrays["shapedirs"]).copy()
        arrays["shapedirs"][:, 0, :] *= -1


class SMPLFamilyBody(BodyModel):
    """SMPL (6,890 vertices, 24 joints, Y-up) or MANO (778 vertices, 16 joints, Y-up) from the user's file.

    shape: the first `num_betas` betas (unbounded; ~N(0, 1)). Pose correctives are applied (smplx's lbs).
    A HMR-style file's `cocoplus_regressor` (19 x V) is kept as `cocoplus_regressor` for 2D/3D keypoints.
    """

    def __init__(self, path: str | Path, kind: str = "smpl", *, is_right: bool | None = None, num_betas: int = 10):
        super().__init__()
        import smplx
        from smplx.utils import Struct

        arrays = read_model_arrays(path, kind)
        cocoplus = arrays.pop("cocoplus_regressor", None)
        self.up_axis = "y"
        num_betas = min(num_betas, np.asarray(arrays["shapedirs"]).shape[-1])
        try:
            if kind == "smpl":
                self.layer = smplx.SMPLLayer(model_path=str(path), data_struct=Struct(**arrays), num_betas=num_betas)
            else:
                if is_right is None:
                    is_right = "LEFT" not in Path(path).name.upper()
                if not is_right:
                    _fix_left_mano_shapedirs(arrays)
                self.layer = smplx.MANOLayer(
                    model_path=str(path), data_struct=Struct(**arrays), is_rhand=is_right,
                    use_pca=False, flat_hand_mean=True, num_betas=num_betas,
                )  # fmt: skip
        except Exception as exc:  # smplx's own checks: report them as one line about the file
            raise BodyModelError(f"{path} could not be built into an {kind.upper()} model: {exc}") from None
        spec = _KINDS[kind]
        self.name = kind if kind == "smpl" else ("mano-right" if is_right else "mano-left")
        self.kind = "body" if kind == "smpl" else "hand"
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        self.joint_names = list(spec["names"])
        self.parents = self.layer.parents.cpu().numpy().astype(np.int64)
        self.parents[0] = -1
        self.shape_names = [f"beta{i}" for i in range(num_betas)]
        self.shape_bounds = None
        self._init_tree()
        self.register_buffer("skinning_weights", self.layer.lbs_weights.clone())
        if cocoplus is not None:
            self.register_buffer("cocoplus_regressor", torch.as_tensor(np.asarray(cocoplus), dtype=torch.float32))

    def rest_vertices(self, shape: Tensor) -> Tensor:
        from smplx.lbs import blend_shapes

        return self.layer.v_template + blend_shapes(shape, self.layer.shapedirs)

    def rest_joints(self, shape: Tensor) -> Tensor:
        from smplx.lbs import vertices2joints

        return vertices2joints(self.layer.J_regressor, self.rest_vertices(shape))

    def _posed(self, params: BodyParams, vertex_ids: Tensor | None = None) -> BodyOutput:
        local = axis_angle_to_matrix(params.full_pose)  # (B, J, 3, 3)
        if self.name == "smpl":
            out = self.layer(betas=params.shape, global_orient=local[:, :1], body_pose=local[:, 1:])
        else:
            out = self.layer(betas=params.shape, global_orient=local[:, :1], hand_pose=local[:, 1:])
        rotations = global_rotations(local, self.parents, self.levels)
        vertices = out.vertices if vertex_ids is None else out.vertices[:, vertex_ids]
        return BodyOutput(vertices=vertices, joints=out.joints[:, : self.joint_count], joint_rotations=rotations)
