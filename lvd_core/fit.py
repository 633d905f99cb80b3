"""Fit body-model parameters to predicted vertices (and optionally to the scan surface).

Stages, each a small function:
1. `similarity_init`: global rotation, scale and translation in closed form (weighted Umeyama) from the
   rest template to the targets.
2. `part_rotation_init`: every joint's rotation from its body part, root to leaves (Kabsch on the centred
   points it dominates), so the solver starts near the answer.
3. `levenberg_marquardt` stages: pose, shape, pose, then everything (least squares), restarts from probe
   ages for Anny (`escape_shape_minima`), and a robust finish (Geman-McClure reweighting) so a few wild LVD
   vertices cannot drag the body; priors keep the shape plausible (BodyModel.shape_prior) and unseen joints at
   rest. Its Jacobian is in closed form (`BodyModel.vertex_jacobian`: one skinning pass on the rows' vertices
   only, frozen joints left out). Rows are the LVD vertices and, optionally, landmarks (`LandmarkTargets`).
4. `refine_with_pairs`: ICP-style rounds of the same solver with re-paired (body vertex, goal) rows, anchored
   by the LVD vertices: `refine_to_surface` pairs the body with the scan's surface (scans; by default inside
   the clothes, lvd_core.clothing), and the photo fit pairs its silhouette with the person mask (lvd_core.photo).

Why not the paper's fit (Adam, 500 steps, lr 0.1 with linear decay, L1 + 0.01 mean(beta^2))? The closed-form
initialisation plus Levenberg-Marquardt converges in tens of steps, to sub-millimetre on exact targets, 3-17x
faster (benchmarks/results_body_fit.md); `paper_fit` keeps the paper's recipe as the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .body.base import BodyModel, BodyParams, axis_angle_to_matrix, matrix_to_axis_angle


@dataclass
class FitOptions:
    pose_iterations: int = 3  # Levenberg-Marquardt steps of each pose stage (shape fixed)
    shape_iterations: int = 2  # ... of each shape stage (joint rotations fixed)
    alternations: int = 1  # shape / pose rounds before everything is freed
    full_iterations: int = 10  # then everything free, least squares
    robust_iterations: int = 5  # and last robust (Geman-McClure reweighting)
    # Priors, per squared size of the body (its largest extent, m^2) since residuals scale with it: the weight of
    # the shape's negative log prior (BodyModel.shape_prior_residuals) against mean squared residuals, and of
    # |joint_pose|^2 (joints without targets stay at rest, the others are unaffected).
    shape_prior: float = 3.5e-7
    pose_prior: float = 3.5e-9
    # The shape prior at full weight while the rows' RMS distance is at or above this fraction of the body's size
    # (10 mm on a 1.7 m body; fits to LVD vertices sit at 15-20 mm); below it the prior weakens with the squared
    # distance (a Gaussian prior weighs as the targets' noise variance), so near-exact targets are met exactly.
    prior_noise: float = 0.006
    # Geman-McClure scale as a fraction of the body's size (5 cm on a 1.7 m body, 5 mm on a hand): residuals far
    # above it stop pulling.
    robust_scale: float = 0.03
    fit_scale: bool = True
    # Restart from the body model's BodyModel.shape_restarts once settled (escape_shape_minima), for this many steps.
    shape_restarts: bool = True
    probe_iterations: int = 4
    # Joints kept at their starting rotation (names; absent ones ignored): e.g. fingers and toes, which a few
    # hundred scan correspondences cannot pin down, to fit a body scan 2-3x faster.
    frozen_joints: tuple = ()
    # joint_pose (J-1, 3) the frozen joints are held at (e.g. relaxed fingers); None: their initial rotation.
    frozen_pose: np.ndarray | None = None
    # "analytic": the rotations' derivatives in closed form (fast); "finite_difference": the reference.
    jacobian: str = "analytic"
    surface_iterations: int = 12  # refine_to_surface: Levenberg-Marquardt steps in all
    surface_steps_per_round: int = 2  # ... between re-pairings of body and scan points
    surface_weight: float = 8.0  # the scan pairs' total weight against the LVD vertices


@dataclass
class LandmarkTargets:
    """Points that are fixed linear maps of the posed body's vertices (e.g. detected landmarks through a
    regressor), matched next to the LVD vertices: each adds the rows sqrt(w) (regressor @ vertices - target),
    normalised with the vertex rows' weights and under the same robust reweighting.

    regressor: (L, V) dense or sparse, from the posed, scaled and translated vertices to L points.
    targets:   (B, L, 3) metres, model frame (anything where the weight is 0).
    weights:   (B, L) >= 0 on the vertex weights' scale (1 counts as much as one LVD vertex); 0: not seen.
    huber:     metres or None. Given, the landmark rows take a Huber loss in every stage instead of the vertex
               rows' treatment: beyond this distance a landmark's pull stops growing, but never fades, so a limb
               the vertices misplaced is still pulled from afar while a wrong detection cannot take over.
    """

    regressor: Tensor
    targets: Tensor
    weights: Tensor
    huber: float | None = None

    def item(self, b: int) -> "LandmarkTargets":
        """Batch item b (keeping a batch dimension of 1)."""
        return LandmarkTargets(self.regressor, self.targets[b : b + 1], self.weights[b : b + 1], self.huber)


@dataclass
class BodyFit:
    params: BodyParams
    vertices: Tensor  # (B, V, 3) the fitted body, all vertices
    residuals: Tensor  # (B, N) distance of each fitted target vertex to its target, metres

    def item(self, b: int) -> "BodyFit":
        """Batch item b (keeping a batch dimension of 1)."""
        return BodyFit(self.params.index(b), self.vertices[b : b + 1], self.residuals[b : b + 1])


# ---------------------------------------------------------------------------------------------------------
# 1. similarity


def weighted_umeyama(source: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best s, R, t with target ~ s R source + t. source, target (B, N, 3); weights (B, N) >= 0.
    Returns rotation (B, 3, 3), scale (B,), translation (B, 3)."""
    w = weights / weights.sum(1, keepdim=True)
    mu_s = (w[..., None] * source).sum(1)
    mu_t = (w[..., None] * target).sum(1)
    xs, xt = source - mu_s[:, None], target - mu_t[:, None]
    cov = torch.einsum("bn,bni,bnj->bij", w, xt, xs)
    u, sigma, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    d = torch.ones_like(sigma)
    d[:, 2] = sign
    rotation = u @ torch.diag_embed(d) @ vh
    variance = (w * xs.square().sum(-1)).sum(1)
    scale = (sigma * d).sum(1) / variance
    translation = mu_t - scale[:, None] * (rotation @ mu_s[..., None])[..., 0]
    return rotation, scale, translation


def similarity_init(body: BodyModel, targets: Tensor, vertex_ids: Tensor, weights: Tensor, fit_scale: bool) -> BodyParams:
    """Global rotation, scale and translation of the neutral body that best match the targets (B, N, 3)."""
    batch = targets.shape[0]
    params = body.zero_params(batch)
    rest = body.rest_vertices(params.shape)[:, vertex_ids]
    rotation, scale, shift = weighted_umeyama(rest, targets, weights)
    if not fit_scale:
        scale = torch.ones_like(scale)
        shift = (weights[..., None] * (targets - (rotation @ rest.transpose(1, 2)).transpose(1, 2))).sum(1) / weights.sum(
            1, keepdim=True
        )
    # Our model rotates about the root joint: v = s (R (x - J0) + J0) + t, so t = shift - s (J0 - R J0).
    root = body.rest_joints(params.shape)[:, 0]
    translation = shift - scale[:, None] * (root - (rotation @ root[..., None])[..., 0])
    return params.with_(
        global_orient=matrix_to_axis_angle(rotation), scale=scale[:, None], translation=translation
    )


# ---------------------------------------------------------------------------------------------------------
# 2. per-part rotations


def kabsch(source: Tensor, target: Tensor) -> Tensor:
    """Rotation (3, 3) with target ~ R source for centred-or-not point sets (N, 3) about the origin."""
    u, _, vh = torch.linalg.svd(target.T @ source)
    d = torch.ones(3, dtype=source.dtype, device=source.device)
    d[2] = torch.sign(torch.linalg.det(u @ vh))
    return u @ torch.diag(d) @ vh


def part_rotation_init(body: BodyModel, params: BodyParams, targets: Tensor, vertex_ids: Tensor, min_points: int = 8) -> BodyParams:
    """Each joint's rotation from the target points of its part (the vertices it dominates), root to leaves.
    Parts too small or too flat to define a rotation keep the parent's orientation."""
    owner = body.skinning_weights[vertex_ids].argmax(1)  # (N,)
    children = [np.flatnonzero(body.parents == j) for j in range(body.joint_count)]
    rest_v = body.rest_vertices(params.shape)[:, vertex_ids]
    local_targets = targets / params.scale[:, None]  # only directions matter: undo the scale

    def part_rotation(b: int, j: int, fallback: Tensor) -> Tensor:
        """Kabsch on the centred points of j's part (its own, or with its children's when too few or flat):
        centring makes the rotation independent of where the joint was placed."""
        for mask in (owner == j, torch.isin(owner, torch.as_tensor(np.append(children[j], j), device=owner.device))):
            if int(mask.sum()) < min_points:
                continue
            src = rest_v[b, mask] - rest_v[b, mask].mean(0)
            dst = local_targets[b, mask] - local_targets[b, mask].mean(0)
            spread = torch.linalg.svdvals(src)
            if spread[1] > 0.05 * spread[0]:  # a near-collinear part leaves its twist undefined
                return kabsch(src, dst)
        return fallback

    global_orient, joint_pose = params.global_orient.clone(), params.joint_pose.clone()
    for b in range(targets.shape[0]):
        glob = [None] * body.joint_count
        glob[0] = part_rotation(b, 0, axis_angle_to_matrix(params.global_orient[b]))
        global_orient[b] = matrix_to_axis_angle(glob[0])
        for level in body.levels[1:]:
            for j in level:
                parent = body.parents[j]
                glob[j] = part_rotation(b, j, glob[parent])
                joint_pose[b, j - 1] = matrix_to_axis_angle(glob[parent].T @ glob[j])
    params = params.with_(global_orient=global_orient, joint_pose=joint_pose)
    return _refit_translation(body, params, targets, vertex_ids)


def hold_frozen_joints(body: BodyModel, params: BodyParams, options: FitOptions) -> BodyParams:
    """params with the frozen joints' rotations set to options.frozen_pose (unchanged when it is None)."""
    if options.frozen_pose is None:
        return params
    rows = [body.joint_names.index(n) - 1 for n in options.frozen_joints if n in body.joint_names[1:]]
    joint_pose = params.joint_pose.clone()
    held = torch.as_tensor(options.frozen_pose, dtype=joint_pose.dtype, device=joint_pose.device)
    joint_pose[:, rows] = held[rows]
    return params.with_(joint_pose=joint_pose)


def _refit_translation(body: BodyModel, params: BodyParams, targets: Tensor, vertex_ids: Tensor) -> BodyParams:
    """Translation that matches the centroids after the rotations changed (closed form)."""
    current = body(params, vertex_ids=vertex_ids).vertices
    return params.with_(translation=params.translation + (targets - current).mean(1))


# ---------------------------------------------------------------------------------------------------------
# 3. robust refinement


class _Free:
    """The unknowns of a fit as leaf tensors; the bounded shape (Anny phenotypes) lives on the real line
    through a sigmoid. A stage frees a subset: "pose" (rotations and placement), "shape" (shape and
    placement) or "full"; `vector`/`candidates`/`assign` flatten a stage's unknowns for Levenberg-Marquardt."""

    NAMES = ("global_orient", "translation", "log_scale", "joint_pose", "shape_raw")

    def __init__(self, body: BodyModel, params: BodyParams, fit_scale: bool = True):
        self.body, self.fit_scale = body, fit_scale
        self.global_orient = params.global_orient.detach().clone().requires_grad_(True)
        self.joint_pose = params.joint_pose.detach().clone().requires_grad_(True)
        self.translation = params.translation.detach().clone().requires_grad_(True)
        self.log_scale = params.scale.detach().log().requires_grad_(True)
        self.shape_raw = body.unbounded_shape(params.shape.detach()).clone().requires_grad_(True)

    def shape_of(self, raw: Tensor) -> Tensor:
        """The shape of unknowns `raw` (..., S)."""
        if not self.body.shape_bounds:
            return raw
        lo, hi = self.body.shape_bounds
        return lo + (hi - lo) * torch.sigmoid(raw)

    def params(self) -> BodyParams:
        return self._build({name: getattr(self, name) for name in self.NAMES})

    def _build(self, values: dict[str, Tensor]) -> BodyParams:
        return BodyParams(
            values["global_orient"], values["joint_pose"], self.shape_of(values["shape_raw"]),
            values["translation"], values["log_scale"].exp(),
        )  # fmt: skip

    def names(self, stage: str) -> list[str]:
        chosen = ["global_orient", "translation"] + (["log_scale"] if self.fit_scale else [])
        if stage in ("pose", "full"):
            chosen.append("joint_pose")
        if stage in ("shape", "full"):
            chosen.append("shape_raw")
        return chosen

    def active_columns(self, stage: str, frozen_joints: set[int]) -> Tensor:
        """Indices into `vector(stage)` of the unknowns to solve for: all but the frozen joints' rotations."""
        columns, offset = [], 0
        for name in self.names(stage):
            width = getattr(self, name)[0].numel()
            if name == "joint_pose":  # joint j (1..J-1) owns columns offset + 3 (j - 1) + (0, 1, 2)
                columns += [offset + 3 * (j - 1) + k for j in range(1, width // 3 + 1) if j not in frozen_joints for k in range(3)]
            else:
                columns += range(offset, offset + width)
            offset += width
        return torch.tensor(columns, dtype=torch.long, device=self.global_orient.device)

    def tensors(self, stage: str) -> list[Tensor]:
        return [getattr(self, name) for name in self.names(stage)]

    def vector(self, stage: str) -> Tensor:
        """(B, P) the stage's unknowns of every batch item, flattened."""
        return torch.cat([t.detach().flatten(1) for t in self.tensors(stage)], dim=1)

    def candidates(self, x: Tensor, stage: str) -> BodyParams:
        """Parameters for K = m * B candidate vectors x (K, P) (item b's candidates at rows b, b + B, ...)."""
        m = x.shape[0] // self.global_orient.shape[0]
        values, offset = {}, 0
        for name in self.NAMES:
            t = getattr(self, name).detach()
            if name in self.names(stage):
                width = t[0].numel()
                values[name] = x[:, offset : offset + width].reshape(-1, *t.shape[1:])
                offset += width
            else:
                values[name] = t.repeat(m, *[1] * (t.dim() - 1))
        return self._build(values)

    def assign(self, x: Tensor, stage: str) -> None:
        offset = 0
        with torch.no_grad():
            for t in self.tensors(stage):
                width = t[0].numel()
                t.copy_(x[:, offset : offset + width].reshape(t.shape))
                offset += width


class _Goals:
    """Everything a fit matches, as rows: the body's vertices `vertex_ids` (N) against their targets, then the
    landmark points (L) against theirs. `ids` (K,) are the body vertices the rows need (the N, then the
    landmark regressor's support); `points` maps those posed vertices (B, K, 3) to the rows' points (B, N + L, 3)."""

    def __init__(self, body: BodyModel, targets: Tensor, vertex_ids: Tensor, weights: Tensor, landmarks: LandmarkTargets | None = None):
        self.vertex_count = len(vertex_ids)
        self.ids, self.mix, self.targets, self.weights = vertex_ids, None, targets, weights
        self.huber = None  # metres: the landmark rows' Huber scale (LandmarkTargets.huber)
        if landmarks is None:
            return
        self.huber = landmarks.huber
        kw = dict(device=body.device, dtype=body.dtype)
        regressor = landmarks.regressor.to_dense() if landmarks.regressor.is_sparse else landmarks.regressor
        regressor = regressor.to(**kw)
        found = landmarks.targets.to(**kw)
        seen = landmarks.weights.to(**kw)
        expected = (targets.shape[0], regressor.shape[0])
        if regressor.dim() != 2 or regressor.shape[1] != body.vertex_count:
            raise ValueError(
                f"landmark regressor has shape {tuple(regressor.shape)}; expected (L, {body.vertex_count}), one column per body vertex"
            )
        if tuple(found.shape) != (*expected, 3) or tuple(seen.shape) != expected:
            raise ValueError(
                f"landmark targets {tuple(found.shape)} and weights {tuple(seen.shape)} do not match the batch and the "
                f"regressor: expected {(*expected, 3)} and {expected}"
            )
        if (seen < 0).any():
            raise ValueError("landmark weights must be >= 0 (0 for a landmark not seen)")
        support = regressor.abs().sum(0).nonzero()[:, 0]
        self.ids = torch.cat([vertex_ids.to(body.device), support])
        self.mix = regressor[:, support]  # (L, K - N)
        # Unseen landmarks weigh nothing; their targets are zeroed so a NaN placeholder cannot leak in.
        self.targets = torch.cat([targets, torch.where(seen[..., None] > 0, found, torch.zeros_like(found))], dim=1)
        self.weights = torch.cat([weights, seen], dim=1)

    @property
    def vertex_targets(self) -> Tensor:
        """(B, N, 3) the targets of the vertex rows."""
        return self.targets[:, : self.vertex_count]

    def points(self, vertices: Tensor) -> Tensor:
        """Posed vertices `ids` (B, K, 3) (or their derivatives (B, K, 3, P)) -> the rows' points (B, N + L, ...)."""
        if self.mix is None:
            return vertices
        n = self.vertex_count
        landmarks = torch.einsum("lk,bk...->bl...", self.mix, vertices[:, n:])
        return torch.cat([vertices[:, :n], landmarks], dim=1)

    def repeat(self, m: int) -> "_Goals":
        """The same rows for m copies of the batch (copy k of item b at batch row k * B + b)."""
        copy = object.__new__(_Goals)
        copy.__dict__.update(self.__dict__)
        copy.targets, copy.weights = self.targets.repeat(m, 1, 1), self.weights.repeat(m, 1)
        return copy

    def squared_error(self, body: BodyModel, params: BodyParams) -> Tensor:
        """(B,) the weighted mean squared distance of the rows' points to their targets."""
        squared = (self.points(body(params, vertex_ids=self.ids).vertices) - self.targets).square().sum(-1)
        return (self.weights * squared).sum(1) / self.weights.sum(1)


def levenberg_marquardt(
    body: BodyModel, free: _Free, stage: str, goals: _Goals, options: FitOptions, iterations: int,
    robust_scale: Tensor | None = None, step: float = 1e-3,
) -> None:  # fmt: skip
    """Levenberg-Marquardt on a stage's unknowns, robust through iteratively reweighted least squares
    (Geman-McClure weights). The Jacobian (options.jacobian) is "analytic": the rotations' in closed form on the
    rows' vertices only (about one forward pass), or "finite_difference": one batched forward pass per chunk of
    unknowns (the slower reference).

    Why not L-BFGS: Anny's phenotypes act through a piecewise-linear interpolation between anchor shapes,
    and its many short and twist bones make the pose badly conditioned. At the kinks (0.5 is one) L-BFGS's
    curvature model breaks and it stalls millimetres away; LM re-linearises every step and converges.
    robust_scale (B,) metres per item, or None for least squares. Every item is solved on its own (its own
    size, priors and damping): a batch gives each item the result it would get alone."""
    targets, weights = goals.targets, goals.weights
    batch = targets.shape[0]
    size = body_size(goals.vertex_targets)[:, None]  # (B, 1)
    full_prior, pose_prior = (options.shape_prior**0.5) * size, (options.pose_prior**0.5) * size
    prior = full_prior  # the shape prior's square-root weight, weakened each step where the rows fit closely

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        """x (m*B, P) -> the rows' vertices (m*B, K, 3) and the priors' residuals (m*B, S + 3(J-1))."""
        m = x.shape[0] // batch
        params = free.candidates(x, stage)
        shape_term = prior.repeat(m, 1) * body.shape_prior_residuals(params.shape)
        pose_term = pose_prior.repeat(m, 1) * params.joint_pose.flatten(1)
        return body(params, vertex_ids=goals.ids).vertices, torch.cat([shape_term, pose_term], dim=1)

    def stack(vertices: Tensor, priors: Tensor, sqrt_w: Tensor) -> Tensor:
        """The weighted residuals (m*B, 3(N + L) + S + 3(J-1)) of evaluate's output."""
        m = vertices.shape[0] // batch
        diff = goals.points(vertices) - targets.repeat(m, 1, 1)
        return torch.cat([(diff * sqrt_w.repeat(m, 1)[..., None]).flatten(1), priors], dim=1)

    def residuals(x: Tensor, sqrt_w: Tensor) -> Tensor:
        return stack(*evaluate(x), sqrt_w)

    def irls_weights(vertices: Tensor) -> Tensor:
        """sqrt of per-row weights: the given confidences, times Geman-McClure's when robust (the landmark rows
        Huber's instead, always, when goals.huber is set); normalised."""
        w = weights / weights.sum(1, keepdim=True)
        if robust_scale is None and goals.huber is None:
            return w.sqrt()
        squared = (goals.points(vertices) - targets).square().sum(-1)
        robust = torch.ones_like(squared)
        if robust_scale is not None:
            robust = (robust_scale[:, None] ** 2 / (squared + robust_scale[:, None] ** 2)) ** 2
        if goals.huber is not None:
            robust[:, goals.vertex_count :] = (goals.huber / squared[:, goals.vertex_count :].sqrt().clamp_min(1e-12)).clamp_max(1.0)
        return (w * robust).sqrt()

    frozen = {body.joint_names.index(name) for name in options.frozen_joints if name in body.joint_names}

    def difference_jacobian(x: Tensor, sqrt_w: Tensor, r: Tensor, chosen: Tensor) -> Tensor:
        """(B, rows, len(chosen)) forward differences in the unknowns `chosen` (indices into x's columns)."""
        jac = torch.empty(batch, r.shape[1], len(chosen), dtype=x.dtype, device=x.device)
        for chunk in torch.arange(len(chosen), device=x.device).split(max(1, 4096 // (batch * len(goals.ids) // 64 + 1))):
            probes = x.repeat(len(chunk), 1)
            probes[torch.arange(len(chunk) * batch), chosen[chunk].repeat_interleave(batch)] += step
            jac[:, :, chunk] = ((residuals(probes, sqrt_w) - r.repeat(len(chunk), 1)) / step).reshape(
                len(chunk), batch, -1
            ).permute(1, 2, 0)
        return jac

    names = free.names(stage)
    free_joints = [j for j in range(1, body.joint_count) if j not in frozen] if "joint_pose" in names else []

    def analytic_jacobian(x: Tensor, vertices: Tensor, sqrt_w: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """In closed form (one skinning pass on the rows' vertices): the rotations' exact, the shape's as forward
        differences of the rest shape skinned with the pose held. -> the point rows' (B, 3(N + L), len(columns))
        and the prior rows' (B, S + 3(J-1), len(columns)), apart: the point rows are never copied."""
        params = free.candidates(x, stage)
        joints = torch.tensor([0, *free_joints], device=x.device)
        shape_probes = None
        if "shape_raw" in names:  # shape(raw + step e_t) for every t: (B, S, S)
            raw = x[:, -body.shape_size :]
            shape_probes = free.shape_of(raw[:, None] + step * torch.eye(body.shape_size, dtype=x.dtype, device=x.device))
        # The vertex rows' weights go in first (the landmarks' after their regressor): one pass less.
        row_weights = torch.ones(goals.ids.shape[0], dtype=x.dtype, device=x.device).repeat(batch, 1)
        row_weights[:, : goals.vertex_count] = sqrt_w[:, : goals.vertex_count]
        d_rotation, d_shape = body.vertex_jacobian(params, goals.ids, joints, shape_probes, row_weights)
        blocks = [d_rotation[:, :, :, 0], torch.diag_embed(row_weights[..., None].expand(-1, -1, 3))]
        if free.fit_scale:  # d v / d log(scale) = v - translation
            blocks.append((row_weights[..., None] * (vertices - params.translation[:, None]))[..., None])
        blocks.append(d_rotation[:, :, :, 1:].flatten(3))
        if d_shape is not None:
            blocks.append(d_shape / step)
        d_points = goals.points(torch.cat(blocks, dim=-1))  # (B, N + L, 3, P)
        if goals.mix is not None:
            d_points[:, goals.vertex_count :] *= sqrt_w[:, goals.vertex_count :, None, None]
        point_rows = d_points.shape[1] * 3
        priors = d_points.new_zeros(batch, r.shape[1] - point_rows, len(columns))
        if d_shape is not None:  # the shape prior's rows, prior * shape_prior_residuals: differenced like the shape
            at = body.shape_prior_residuals(params.shape)  # (B, S)
            probed = body.shape_prior_residuals(shape_probes.flatten(0, 1)).unflatten(0, shape_probes.shape[:2])
            span = torch.arange(body.shape_size, device=x.device)
            change = (probed - at[:, None]).transpose(1, 2) / step  # (B, row, unknown)
            priors[:, span[:, None], len(columns) - body.shape_size + span[None]] = prior[:, :, None] * change
        if free_joints:  # the pose prior's rows: pose_prior * joint_pose
            rows = torch.tensor([body.shape_size + 3 * (j - 1) + k for j in free_joints for k in range(3)], device=x.device)
            first = len(columns) - (body.shape_size if d_shape is not None else 0) - len(rows)
            priors[:, rows, first + torch.arange(len(rows), device=x.device)] = pose_prior
        return d_points.flatten(1, 2), priors

    if options.jacobian not in ("analytic", "finite_difference"):
        raise ValueError(f"FitOptions.jacobian is {options.jacobian!r}; expected 'analytic' or 'finite_difference'")
    with torch.no_grad():
        x = free.vector(stage)
        columns = free.active_columns(stage, frozen)
        damping = torch.full((batch,), 1e-3, dtype=x.dtype, device=x.device)
        vertices, priors = evaluate(x)
        for _ in range(iterations):
            prior = full_prior * shape_prior_strength(goals.points(vertices) - targets, weights, size, options)
            priors = torch.cat([prior * body.shape_prior_residuals(free.candidates(x, stage).shape), priors[:, body.shape_size :]], 1)
            sqrt_w = irls_weights(vertices)
            r = stack(vertices, priors, sqrt_w)
            if options.jacobian == "analytic":
                points_jac, priors_jac = analytic_jacobian(x, vertices, sqrt_w, r)
            else:
                jac = difference_jacobian(x, sqrt_w, r, columns)
                points_jac, priors_jac = jac[:, : r.shape[1] - priors.shape[1]], jac[:, r.shape[1] - priors.shape[1] :]
            point_rows = points_jac.shape[1]
            jtj = points_jac.transpose(1, 2) @ points_jac + priors_jac.transpose(1, 2) @ priors_jac
            jtr = (points_jac.transpose(1, 2) @ r[:, :point_rows, None] + priors_jac.transpose(1, 2) @ r[:, point_rows:, None])[..., 0]
            diag = torch.diag_embed(jtj.diagonal(dim1=1, dim2=2).clamp_min(1e-12))
            pending = torch.ones(batch, dtype=torch.bool, device=x.device)
            for _attempt in range(4):  # raise the damping until the step helps (or give up this round)
                delta = -torch.linalg.solve(jtj + damping[:, None, None] * diag, jtr)
                candidate = x.clone()
                candidate[:, columns] += delta
                tried, tried_priors = evaluate(candidate)
                better = pending & (stack(tried, tried_priors, sqrt_w).square().sum(1) < r.square().sum(1))
                x = torch.where(better[:, None], candidate, x)
                vertices = torch.where(better[:, None, None], tried, vertices)
                priors = torch.where(better[:, None], tried_priors, priors)
                damping = torch.where(better, damping / 3, torch.where(pending, damping * 5, damping))
                pending &= ~better
                if not pending.any():
                    break
    free.assign(x, stage)


def body_size(targets: Tensor) -> Tensor:
    """Each item's largest extent: targets (B, N, 3) -> (B,), from the 2nd to the 98th percentile per axis so
    wild targets do not inflate it."""
    quantiles = torch.quantile(targets, torch.tensor([0.02, 0.98], dtype=targets.dtype, device=targets.device), dim=1)
    return (quantiles[1] - quantiles[0]).amax(1)


def shape_prior_strength(differences: Tensor, weights: Tensor, size: Tensor, options: FitOptions) -> Tensor:
    """(B, 1) the factor on the shape prior's square-root weight: the rows' weighted RMS distance over
    options.prior_noise times the body's size, at most 1. differences (B, R, 3) rows' points minus targets,
    weights (B, R), size (B, 1) metres."""
    rms = ((weights * differences.square().sum(-1)).sum(1) / weights.sum(1)).sqrt()[:, None]
    return (rms / (options.prior_noise * size)).clamp(max=1.0)


def robust_scale(targets: Tensor, options: FitOptions) -> Tensor:
    """(B,) the Geman-McClure scale in metres: options.robust_scale times each item's size."""
    return options.robust_scale * body_size(targets)


def escape_shape_minima(body: BodyModel, free: _Free, goals: _Goals, options: FitOptions) -> bool:
    """Levenberg-Marquardt stays in the shape's local minimum where the body model's shape space has kinks:
    restart from the model's `shape_restarts` (everything else as fitted; a short full stage from each, all in
    one batch) and keep, per input, the best when it beats the current fit. False: the model has no restarts."""
    batch = goals.targets.shape[0]
    current = free.params().detach()
    shapes = body.shape_restarts(current.shape)  # restart k of item b at row k * batch + b
    if shapes is None:
        return False
    count = len(shapes) // batch
    many = lambda t: t.repeat(count, *[1] * (t.dim() - 1))  # noqa: E731
    trial = _Free(
        body,
        BodyParams(many(current.global_orient), many(current.joint_pose), shapes, many(current.translation), many(current.scale)),
        options.fit_scale,
    )
    goals_k = goals.repeat(count)
    levenberg_marquardt(body, trial, "full", goals_k, options, options.probe_iterations)
    with torch.no_grad():
        trial_error = goals_k.squared_error(body, trial.params()).reshape(count, batch)
        improved = trial_error.min(0).values < goals.squared_error(body, current)
        rows = trial_error.argmin(0) * batch + torch.arange(batch, device=body.device)
        for name in _Free.NAMES:
            chosen = getattr(trial, name).detach()[rows]
            mask = improved.reshape(-1, *[1] * (chosen.dim() - 1))
            getattr(free, name).copy_(torch.where(mask, chosen, getattr(free, name)))
    return True


def fit_to_vertices(
    body: BodyModel,
    targets: Tensor,
    vertex_ids: Tensor | None = None,
    weights: Tensor | None = None,
    options: FitOptions | None = None,
    landmarks: LandmarkTargets | None = None,
) -> BodyFit:
    """Body parameters whose vertices `vertex_ids` (all when None) best match `targets` (B, N, 3), metres.
    weights (B, N) optional per-target confidences; landmarks: more points to match (see LandmarkTargets)."""
    options = options or FitOptions()
    targets = targets.to(device=body.device, dtype=body.dtype)
    if vertex_ids is None:
        vertex_ids = torch.arange(body.vertex_count, device=body.device)
    if weights is None:
        weights = torch.ones(targets.shape[:2], dtype=body.dtype, device=body.device)
    with torch.no_grad():
        params = similarity_init(body, targets, vertex_ids, weights, options.fit_scale)
        params = part_rotation_init(body, params, targets, vertex_ids)
        params = hold_frozen_joints(body, params, options)
    free = _Free(body, params, options.fit_scale)
    goals = _Goals(body, targets, vertex_ids, weights, landmarks)
    # The pose first (the shape near neutral explains most of a body), then shape and pose alternately,
    # then everything; least squares first (every part pulls, however far), robust last (wild LVD vertices
    # stop pulling once the body is in place).
    run = lambda stage, iterations, scale=None: levenberg_marquardt(  # noqa: E731
        body, free, stage, goals, options, iterations, scale
    )
    run("pose", options.pose_iterations)
    for _ in range(options.alternations):
        run("shape", options.shape_iterations)
        run("pose", options.pose_iterations)
    # Everything free; the robust scale anneals from 10x (only far-off targets lose weight: every body part
    # still pulls) down to 1x.
    scale = robust_scale(targets, options)
    run("full", options.full_iterations, 10 * scale)
    if options.shape_restarts and escape_shape_minima(body, free, goals, options):
        run("full", options.full_iterations // 2, 10 * scale)
    run("full", options.robust_iterations, scale)
    params = free.params().detach()
    with torch.no_grad():
        vertices = body(params).vertices
        residuals = (vertices[:, vertex_ids] - targets).norm(dim=-1)
    return BodyFit(params=params, vertices=vertices, residuals=residuals)


# ---------------------------------------------------------------------------------------------------------
# 4. scan surface




def refine_with_pairs(
    body: BodyModel,
    fit: BodyFit,
    targets: Tensor,
    pairing: list,
    vertex_ids: Tensor | None = None,
    options: FitOptions | None = None,
    landmarks: LandmarkTargets | None = None,
    target_weights: Tensor | None = None,
) -> BodyFit:
    """ICP-style rounds: each round, `pairing[b](current vertices (V, 3) numpy)` returns body vertex ids (K,)
    and their goals (K, 3) (metres, model frame) for batch item b, and optionally the pairs' weights (K,) (1 when
    absent); Levenberg-Marquardt then solves with the LVD vertices as an anchor (unit-weight pairs weigh
    `options.surface_weight` : 1 against them), robustly: every pair is one more (vertex, target) row. Items are
    refined one at a time (their pairs differ). target_weights (B, N): the LVD vertices' weights (1 when None;
    0 drops a vertex the scan showed wrong)."""
    options = options or FitOptions()
    if vertex_ids is None:
        vertex_ids = torch.arange(body.vertex_count, device=body.device)
    rounds = max(1, options.surface_iterations // options.surface_steps_per_round)
    refined = []
    for b, pairs_of in enumerate(pairing):
        free = _Free(body, fit.params.index(b), options.fit_scale)
        for _ in range(rounds):
            with torch.no_grad():
                current = body(free.params()).vertices[0].cpu().numpy()
            pair_ids, pair_goals, *pair_weights = pairs_of(current)
            ids = torch.cat([vertex_ids.cpu(), torch.as_tensor(pair_ids, dtype=torch.long)]).to(body.device)
            goals = torch.cat([targets[b], torch.as_tensor(pair_goals, dtype=body.dtype, device=body.device)])[None]
            pair_weight = options.surface_weight * len(vertex_ids) / max(len(pair_ids), 1)
            pair_weights = torch.as_tensor(pair_weights[0] if pair_weights else np.ones(len(pair_ids)), dtype=torch.float32)
            anchors = torch.ones(len(vertex_ids)) if target_weights is None else target_weights[b].cpu().float()
            weights = torch.cat([anchors, pair_weight * pair_weights])[None]
            rows = _Goals(body, goals, ids, weights.to(body.device, body.dtype), None if landmarks is None else landmarks.item(b))
            levenberg_marquardt(
                body, free, "full", rows, options, options.surface_steps_per_round, robust_scale(targets[b : b + 1], options)
            )  # fmt: skip
        refined.append(free.params().detach())
    params = BodyParams.concatenate(refined)
    with torch.no_grad():
        vertices = body(params).vertices
    return BodyFit(params=params, vertices=vertices, residuals=(vertices[:, vertex_ids] - targets).norm(dim=-1))


def refine_to_surface(
    body: BodyModel,
    fit: BodyFit,
    targets: Tensor,
    scan_points: list[Tensor],
    vertex_ids: Tensor | None = None,
    options: FitOptions | None = None,
    landmarks: LandmarkTargets | None = None,
    pairing=None,
    target_weights: Tensor | None = None,
) -> BodyFit:
    """Fit the body into the scan (`refine_with_pairs`). scan_points: per batch item (M_b, 3), metres.
    pairing(body, scan (M, 3) numpy) makes each item's pairing: by default `lvd_core.clothing.clothing_pairing`
    (the body inside the clothes, on the skin); `lvd_core.clothing.surface_pairing` pulls it onto the scan everywhere."""
    if pairing is None:
        from .clothing import clothing_pairing as pairing
    pairing = [pairing(body, scan.detach().cpu().double().numpy()) for scan in scan_points]
    return refine_with_pairs(body, fit, targets, pairing, vertex_ids, options, landmarks, target_weights)


# ---------------------------------------------------------------------------------------------------------
# the paper's fit, kept as the baseline


def paper_fit(body: BodyModel, targets: Tensor, vertex_ids: Tensor | None = None, iterations: int = 500, lr: float = 0.1, shape_weight: float = 0.01) -> BodyFit:
    """The authors' recipe: Adam over all parameters from the rest pose (scale 1), lr linearly decayed to 0,
    loss = mean L1 vertex distance + shape_weight * mean(shape^2)."""
    targets = targets.to(device=body.device, dtype=body.dtype)
    if vertex_ids is None:
        vertex_ids = torch.arange(body.vertex_count, device=body.device)
    free = _Free(body, body.zero_params(targets.shape[0]))
    tensors = free.tensors("full")
    optimiser = torch.optim.Adam(tensors, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: 1.0 - i / iterations)
    for _ in range(iterations):
        optimiser.zero_grad()
        p = free.params()
        l1 = (body(p, vertex_ids=vertex_ids).vertices - targets).abs().sum(-1).mean()
        loss = l1 + shape_weight * (p.shape - body.default_shape()).square().mean()
        loss.backward()
        optimiser.step()
        schedule.step()
    params = free.params().detach()
    with torch.no_grad():
        vertices = body(params).vertices
    return BodyFit(params=params, vertices=vertices, residuals=(vertices[:, vertex_ids] - targets).norm(dim=-1))
