"""SMPL, SMPL-X and MANO bodies from a fitted Anny body, without a network of their own.

The shipped Anny networks find the body; `transfer_fit` then fits the user's model to the fitted Anny body:
1. the skeleton: the target's bones pointed at the Anny joints matched by name (JOINT_MAPS, the one place the
   names are paired) in closed form (`skeleton_init`), then settled on those joints with the solver, the shape
   under a firm prior;
2. surface to surface: nearest-point pairs both ways between the two unclothed bodies, re-paired each round,
   under the target model's own shape prior (betas ~ N(0, 1)) and pose prior, the joints still anchoring.
Both solver stages are lvd_core.fit.refine_with_pairs: the matched joints are its anchor (as the LVD vertices are
in a scan fit), the joints the skeletons place differently are weaker LandmarkTargets rows, the surface pairs
the rest. The target model carries its posed joints as extra points (`JointsAsVertices`), so the joints matched
are the model's own kinematic joints, not a regressor's estimate from the skinned mesh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .body import BodyModel, BodyParams
from .body.base import BodyOutput, axis_angle_to_matrix, global_rotations, matrix_to_axis_angle, posed_joints
from .fit import BodyFit, FitOptions, LandmarkTargets, kabsch, refine_with_pairs
from .inputs.frame import QUARTER_TURNS, apply_transform
from .results import FitResult

SIDES = (("left", "L"), ("right", "R"))
ANNY_FINGERS = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}


def _both_sides(pairs: dict[str, str]) -> dict[str, str]:
    """{"hip": "upperleg01"} -> {"left_hip": "upperleg01.L", "right_hip": "upperleg01.R"}."""
    return {f"{side}_{target}": f"{anny}.{suffix}" for side, suffix in SIDES for target, anny in pairs.items()}


def _anny_fingers(suffix: str, prefix: str = "") -> dict[str, str]:
    """SMPL-X / MANO finger joints (index1 ... thumb3) -> Anny finger bones of one hand."""
    return {f"{prefix}{finger}{k}": f"finger{n}-{k}.{suffix}" for finger, n in ANNY_FINGERS.items() for k in (1, 2, 3)}


_SMPL_BODY = {
    "pelvis": "root", "spine1": "spine04", "spine2": "spine02", "spine3": "spine01", "neck": "neck01", "head": "head",
    **_both_sides({"hip": "upperleg01", "knee": "lowerleg01", "ankle": "foot", "foot": "toe3-1", "collar": "clavicle",
                   "shoulder": "upperarm01", "elbow": "lowerarm01", "wrist": "wrist"}),
}  # fmt: skip
# Target joint -> the Anny bone whose head lies where that joint is, per target model (source: Anny body or hand).
JOINT_MAPS = {
    "smpl": {**_SMPL_BODY, **_both_sides({"hand": "finger3-1"})},
    "smplx": {
        **_SMPL_BODY, "left_eye_smplhf": "eye.L", "right_eye_smplhf": "eye.R",
        **{k: v for side, suffix in SIDES for k, v in _anny_fingers(suffix, f"{side}_").items()},
    },
    "mano-right": {"wrist": "wrist.R", **_anny_fingers("R")},
    "mano-left": {"wrist": "wrist.L", **_anny_fingers("L")},
}  # fmt: skip
# Joints whose centres the skeletons place differently (a foot joint at the toes or the ball, a hand joint at the
# knuckles, a collar bone at the sternum or the shoulder) weigh this much in the joint stage, the others 1: they
# only start the limb's end turned the right way; the surface stage places it.
LOOSE_JOINTS = {"left_foot", "right_foot", "left_hand", "right_hand", "left_collar", "right_collar",
                "left_eye_smplhf", "right_eye_smplhf"}  # fmt: skip
LOOSE_WEIGHT = 0.25
SOURCE_MODELS = {"smpl": "anny", "smplx": "anny", "mano-right": "anny-hand-right", "mano-left": "anny-hand-left"}
# Body models fitted through Anny when no network of their own is given ("mano" takes its side from its file).
TRANSFERRED_BODIES = (*SOURCE_MODELS, "mano")


def source_model(target: BodyModel) -> str:
    """The Anny model whose fit `target` is transferred from ("anny", "anny-hand-right" or "anny-hand-left")."""
    if target.name not in SOURCE_MODELS:
        raise ValueError(f"no transfer from Anny to {target.name!r}; expected one of: {', '.join(SOURCE_MODELS)}")
    return SOURCE_MODELS[target.name]


def joint_map(source: BodyModel, target: BodyModel) -> dict[str, str]:
    """The target model's joints matched to Anny bones (target joint name -> Anny bone name)."""
    expected = source_model(target)
    if source.name != expected:
        raise ValueError(f"{target.name} is transferred from an {expected} fit, not from {source.name}: fit with {expected}")
    return JOINT_MAPS[target.name]


# ---------------------------------------------------------------------------------------------------------
# the target model with its joints as extra points


class JointsAsVertices(BodyModel):
    """`body` whose vertex list goes on with its posed joints (vertex V + j is joint j), so the fit's solver can
    match joints and surface points as rows of one kind. Posing joints only costs the kinematic chain."""

    def __init__(self, body: BodyModel):
        super().__init__()
        self.body = body
        self.mesh_vertex_count = body.vertex_count
        for name in ("name", "up_axis", "faces", "joint_names", "parents", "shape_names", "shape_bounds", "levels"):
            setattr(self, name, getattr(body, name))
        # A joint moves with its parent's rotation: its part (fit.part_rotation_init) is the parent's.
        owners = torch.as_tensor(np.maximum(body.parents, 0))
        joint_rows = torch.nn.functional.one_hot(owners, body.joint_count).to(body.skinning_weights)
        self.register_buffer("skinning_weights", torch.cat([body.skinning_weights, joint_rows]))

    def default_shape(self) -> Tensor:
        return self.body.default_shape()

    def rest_vertices(self, shape: Tensor) -> Tensor:
        return torch.cat([self.body.rest_vertices(shape), self.body.rest_joints(shape)], dim=1)

    def rest_joints(self, shape: Tensor) -> Tensor:
        return self.body.rest_joints(shape)

    def _posed(self, params: BodyParams, vertex_ids: Tensor | None = None) -> BodyOutput:
        count = self.mesh_vertex_count
        if vertex_ids is None or (vertex_ids < count).any():
            mesh_ids = None if vertex_ids is None else vertex_ids[vertex_ids < count]
            out = self.body._posed(params, mesh_ids)
            joints, rotations, mesh = out.joints, out.joint_rotations, out.vertices
        else:  # joints only: no skinning
            rotations = global_rotations(axis_angle_to_matrix(params.full_pose), self.parents, self.levels)
            joints = posed_joints(self.body.rest_joints(params.shape), rotations, self.parents, self.levels)
            mesh = joints[:, :0]
        points = torch.cat([mesh, joints], dim=1)
        if vertex_ids is not None:  # back to the order asked for: mesh rows first in `points`, then the joints
            is_mesh = vertex_ids < count
            rank = torch.cumsum(is_mesh.long(), 0) - 1
            points = points[:, torch.where(is_mesh, rank, mesh.shape[1] + vertex_ids - count)]
        return BodyOutput(vertices=points, joints=joints, joint_rotations=rotations)


# ---------------------------------------------------------------------------------------------------------
# the transfer


@dataclass
class TransferOptions:
    joint_fit: FitOptions | None = None  # stage 1 (joints only, one round); None: TRANSFER_JOINT_FIT
    surface_fit: FitOptions | None = None  # stage 2 (surface pairs, joints as the anchor); None: TRANSFER_SURFACE_FIT
    pairs: int = 600  # target vertices and source vertices paired each round (each way)
    seed: int = 0


# The joints leave the shape loosely held: a stronger shape prior in that stage (a beta of 1 costs as much as the
# joints lying ~5 mm off on a 1.7 m body) keeps betas in N(0, 1)'s range; on 4 posed Anny bodies the default prior
# let them reach 12 and the surface stage then stalled 13-17 mm off.
TRANSFER_JOINT_FIT = FitOptions(
    fit_scale=False, shape_restarts=False, surface_iterations=6, surface_steps_per_round=6, shape_prior=1e-5
)  # fmt: skip
# Both bodies are clean surfaces, so the robust scale is wide (10% of the joints' extent: 15 cm on a body, 12 mm on
# a hand): at fit.py's 3% a hand's fingertips, 8 mm off, stopped pulling and stayed short.
TRANSFER_SURFACE_FIT = FitOptions(
    fit_scale=False, shape_restarts=False, surface_iterations=8, surface_steps_per_round=2, surface_weight=20.0,
    robust_scale=0.1,
)  # fmt: skip


@dataclass
class TransferReport:
    """How the transfer went: distances between the two bodies (mm, both ways, vertex to nearest vertex), the
    matched joints' mean distance to their Anny bones (mm), the wall time and the process's CPU time (s; on a
    shared machine the CPU time is what one free core would take)."""

    target_to_source_mm: float
    source_to_target_mm: float
    joint_mm: float
    seconds: float
    cpu_seconds: float
    matched_joints: list[str]


def _vertex_normals_and_areas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) unit area-weighted vertex normals and (V,) each vertex's share of the surface (a third of its faces')."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_areas = np.linalg.norm(face_normals, axis=1) / 2
    normals, areas = np.zeros_like(vertices), np.zeros(len(vertices))
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
        np.add.at(areas, faces[:, k], face_areas / 3)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12), areas


def two_way_pairing(source: np.ndarray, source_faces: np.ndarray, target: np.ndarray, target_faces: np.ndarray,
                    count: int, seed: int = 0):  # fmt: skip
    """The pairing of fit.refine_with_pairs between a body `source` (V_s, 3) and the target model (its current
    vertices `target` (V_t, 3)): sampled target vertices with the tangent plane of their nearest source vertex
    (point to plane, so the coarser mesh is not pulled onto the finer one's vertices), and sampled source vertices
    with their nearest target vertex. Both samples are spread by surface area, not by vertex: Anny's hands hold
    23% of its vertices but 5% of its skin, and SMPL's single hand joint cannot follow curled fingers."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    tree = cKDTree(source)
    normals, source_areas = _vertex_normals_and_areas(source, source_faces)
    target_areas = _vertex_normals_and_areas(target, target_faces)[1]
    target_count = len(target)
    target_sample = rng.choice(target_count, min(count, target_count), replace=False, p=target_areas / target_areas.sum())
    source_sample = source[rng.choice(len(source), min(count, len(source)), replace=False, p=source_areas / source_areas.sum())]

    def pairs(current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mesh = current[:target_count]
        points = mesh[target_sample]
        nearest = tree.query(points, k=1)[1]
        offset = ((source[nearest] - points) * normals[nearest]).sum(1, keepdims=True)
        goals = points + offset * normals[nearest]
        return np.concatenate([target_sample, cKDTree(mesh).query(source_sample, k=1)[1]]), np.concatenate([goals, source_sample])

    return pairs


def transfer_fit(
    source_body: BodyModel, source_params: BodyParams, target_body: BodyModel, options: TransferOptions | None = None
) -> tuple[BodyParams, Tensor, TransferReport]:
    """Fit `target_body` (SMPL, SMPL-X or MANO) to the posed Anny body `source_params` of `source_body`.

    source_params: batch 1, in Anny's model frame (Z-up, metres). Returns the target's parameters (batch 1, in
    the target's model frame: Anny's frame turned to the target's up axis by `frame_rotation`, same origin; the
    Anny fit's scale kept), its vertices (1, V, 3) in that frame, and a TransferReport."""
    options = options or TransferOptions()
    start, cpu_start = time.perf_counter(), time.process_time()
    mapping = joint_map(source_body, target_body)
    matched = [name for name in target_body.joint_names if name in mapping]
    rotation = torch.as_tensor(frame_rotation(source_body, target_body), dtype=target_body.dtype, device=target_body.device)
    # Fit in the Anny fit's own size (scale 1, no translation); its scale and translation are put back last.
    unscaled = source_params.with_(scale=torch.ones_like(source_params.scale), translation=torch.zeros_like(source_params.translation))
    with torch.no_grad():
        posed = source_body(unscaled)
    source_vertices = (posed.vertices[0].to(target_body.dtype) @ rotation.T).to(target_body.device)
    source_joints = posed.joints[0].to(target_body.dtype).to(target_body.device) @ rotation.T
    joint_targets = source_joints[[source_body.joint_names.index(mapping[name]) for name in matched]][None]
    fast = _fast_twin(target_body)
    model = JointsAsVertices(fast)
    start_params = skeleton_init(fast, {fast.joint_names.index(n): joint_targets[0, k] for k, n in enumerate(matched)})
    strict = [k for k, name in enumerate(matched) if name not in LOOSE_JOINTS]
    ids = torch.tensor([fast.vertex_count + fast.joint_names.index(matched[k]) for k in strict], device=target_body.device)
    anchors, loose = joint_targets[:, strict], _loose_joint_rows(model, matched, joint_targets)
    no_pairs = lambda current: (np.zeros(0, dtype=np.int64), np.zeros((0, 3)))  # noqa: E731
    first = BodyFit(start_params, None, None)  # refine_with_pairs starts from the parameters only
    first = refine_with_pairs(model, first, anchors, [no_pairs], ids, options.joint_fit or TRANSFER_JOINT_FIT, loose)
    with torch.no_grad():
        placed = model(first.params).vertices[0, : fast.vertex_count].cpu().double().numpy()
    pairing = two_way_pairing(
        source_vertices.cpu().double().numpy(), source_body.faces, placed, fast.faces, options.pairs, options.seed
    )
    second = refine_with_pairs(model, first, anchors, [pairing], ids, options.surface_fit or TRANSFER_SURFACE_FIT, loose)
    params = second.params
    scale = source_params.scale.to(params.global_orient)
    shift = (rotation @ source_params.translation.to(params.global_orient)[0])[None]
    params = params.with_(scale=scale, translation=scale * params.translation + shift)
    with torch.no_grad():
        out = target_body(params)
    seconds = (time.perf_counter() - start, time.process_time() - cpu_start)
    report = _report(out.vertices[0], out.joints[0], target_body, (source_vertices * scale[0] + shift[0]),
                     joint_targets[0] * scale[0] + shift[0], matched, seconds)  # fmt: skip
    return params, out.vertices, report


def _loose_joint_rows(model: JointsAsVertices, matched: list[str], joint_targets: Tensor) -> LandmarkTargets | None:
    """The loose joints (LOOSE_JOINTS) as landmark rows of weight LOOSE_WEIGHT (the others weigh 1), or None."""
    loose = [k for k, name in enumerate(matched) if name in LOOSE_JOINTS]
    if not loose:
        return None
    regressor = torch.zeros(len(loose), model.vertex_count, dtype=model.dtype, device=model.device)
    for row, k in enumerate(loose):
        regressor[row, model.mesh_vertex_count + model.joint_names.index(matched[k])] = 1.0
    weights = torch.full((1, len(loose)), LOOSE_WEIGHT, dtype=model.dtype, device=model.device)
    return LandmarkTargets(regressor, joint_targets[:, loose], weights)


def skeleton_init(body: BodyModel, targets: dict[int, Tensor]) -> BodyParams:
    """The pose that points the neutral skeleton's bones at the target joints, root to leaves, in closed form
    (so bent knees and raised arms start on the right side): a joint with two or more matched children takes the
    rotation (Kabsch) that best turns their offsets, one with a single child the shortest turn of that bone, the
    rest keep their parent's orientation. The root's rotation comes from its matched children the same way.
    targets: joint index -> (3,) position in the model frame (metres, unscaled)."""
    params = body.zero_params(1)
    rest = body.rest_joints(params.shape)[0]
    children = [np.flatnonzero(body.parents == j) for j in range(body.joint_count)]
    eye = torch.eye(3, dtype=body.dtype, device=body.device)
    glob, placed = [eye] * body.joint_count, [None] * body.joint_count
    local = torch.zeros(body.joint_count, 3, dtype=body.dtype, device=body.device)
    for level in body.levels:
        for j in level:
            parent = body.parents[j]
            base = eye if parent < 0 else glob[parent]
            if parent < 0:
                placed[j] = targets.get(j, rest[j])
            else:
                placed[j] = placed[parent] + base @ (rest[j] - rest[parent])
            seen = [c for c in children[j] if c in targets]
            offsets = torch.stack([base @ (rest[c] - rest[j]) for c in seen]) if seen else None
            wanted = torch.stack([targets[c] - placed[j] for c in seen]) if seen else None
            turn = eye
            if seen and len(seen) >= 2 and torch.linalg.matrix_rank(offsets) >= 2:
                turn = kabsch(offsets, wanted)
            elif seen:
                turn = shortest_turn(offsets[0], wanted[0])
            glob[j] = turn @ base
            local[j] = matrix_to_axis_angle(base.T @ glob[j])
    translation = (placed[0] - rest[0])[None]
    return params.with_(global_orient=local[:1], joint_pose=local[1:][None], translation=translation)


def shortest_turn(a: Tensor, b: Tensor) -> Tensor:
    """(3, 3) the smallest rotation taking direction a to direction b."""
    a, b = a / a.norm().clamp_min(1e-12), b / b.norm().clamp_min(1e-12)
    axis = torch.linalg.cross(a, b)
    return axis_angle_to_matrix(axis / axis.norm().clamp_min(1e-12) * torch.atan2(axis.norm(), a @ b))


def transfer_result(result: FitResult, target_body: BodyModel, options: TransferOptions | None = None):
    """A pipeline result of an Anny fit (lvd_core.pipeline.fit_scan / fit_photo with body=source_model(target))
    as the same fit of `target_body`: its parameters (target model frame), its mesh in the input's frame and
    units, and `input_from_model` for the target's frame. Returns (that result, TransferReport).

    residual_mm, disagreement_mm, doubtful and the lvd_* fields still describe the Anny fit the transfer started
    from (the network's vertices are Anny's); timings gain "transfer"."""
    from .body import load_body_model

    source_body = load_body_model(result.body_name, device=target_body.device, dtype=target_body.dtype)
    params, vertices, report = transfer_fit(source_body, result.params.to(target_body.device, target_body.dtype), target_body, options)
    source_from_target = np.eye(4)
    source_from_target[:3, :3] = frame_rotation(source_body, target_body).T
    input_from_model = result.input_from_model @ source_from_target
    transferred = replace(
        result, body_name=target_body.name, params=params.to(device="cpu"), input_from_model=input_from_model,
        vertices_input=apply_transform(input_from_model, vertices[0].detach().cpu().double().numpy()),
        timings={**result.timings, "transfer": report.seconds},
    )  # fmt: skip
    return transferred, report


def frame_rotation(source_body: BodyModel, target_body: BodyModel) -> np.ndarray:
    """(3, 3) source model frame -> target model frame (a quarter turn between their up axes)."""
    return QUARTER_TURNS[(source_body.up_axis, target_body.up_axis)]


def _fast_twin(body: BodyModel) -> BodyModel:
    """The model to fit with: smplx-backed SMPL / MANO as their CorrectiveLBSBody twin (same maths, but posing a
    vertex subset costs only that subset), kept per model."""
    from .body.smplx_model import CorrectiveLBSBody

    if isinstance(body, CorrectiveLBSBody) or not hasattr(body, "layer"):
        return body
    if "_transfer_twin" not in body.__dict__:
        body.__dict__["_transfer_twin"] = CorrectiveLBSBody.twin_of(body)
    return body.__dict__["_transfer_twin"]


def _report(vertices, joints, target_body, source_vertices, joint_targets, matched, seconds) -> TransferReport:
    from scipy.spatial import cKDTree

    target_np, source_np = vertices.detach().cpu().double().numpy(), source_vertices.detach().cpu().double().numpy()
    there = cKDTree(source_np).query(target_np, k=1)[0]
    back = cKDTree(target_np).query(source_np, k=1)[0]
    ids = [target_body.joint_names.index(n) for n in matched]
    joint_mm = 1000 * float((joints[ids] - joint_targets).norm(dim=-1).mean())
    return TransferReport(1000 * float(there.mean()), 1000 * float(back.mean()), joint_mm, *seconds, matched)


def surface_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, samples_per_face: int = 10) -> np.ndarray:
    """(N,) distance (same units) from each point (N, 3) to the mesh (vertices, faces): to the plane of the face of
    the nearest of a dense sample of the surface (exact wherever that point's foot falls inside the face)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(3), size=samples_per_face)  # (K, 3) barycentric
    corners = vertices[faces]  # (F, 3, 3)
    sample = np.einsum("kc,fcd->fkd", weights, corners).reshape(-1, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    nearest = cKDTree(sample).query(points, k=1)[1]
    face = nearest // samples_per_face
    return np.abs(((points - sample[nearest]) * normals[face]).sum(1))


def transferred(results: list, target_body: BodyModel) -> list:
    """Pipeline results of Anny fits (or the errors in their place) as fits of `target_body` (transfer_result)."""
    return [result if isinstance(result, Exception) else transfer_result(result, target_body)[0] for result in results]
