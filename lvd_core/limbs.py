"""Limbs the network misread, found again on the scan.

LVD reads some poses' limbs wrong while the rest of the body is right: hands on hips come out with the forearms
held out sideways (wrists 25 cm off, elbows within 3 cm). The body fit follows the LVD vertices there, and the
surface refinement, anchored on them, keeps the limb where it is. `search_limbs` turns each limb segment
(forearm, shin, upper arm, thigh) about its joint to point in each of DIRECTIONS directions (and finer around the
best) and scores each placement (`Surroundings.costs`): the segment's skin on
the scan, the hand or foot beyond it on the scan (at a lower weight), the scan points the rest of the body
leaves unexplained covered by the limb, and the segment kept out of the body. A placement is taken only where it
clearly beats the fitted one (MARGIN, GAIN) and the move is justified: the fitted segment lies off the scan, or
the new one explains more of it (a forearm lying on a thigh lies on the scan wherever it lies on the thigh).
The refinement then drops the LVD vertices of the limbs that moved (`LimbSearch.moved`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from .body import BodyModel, BodyParams
from .body.base import axis_angle_to_matrix, matrix_to_axis_angle
from .clothing import vertex_normals

# Limb segments as (joint turned, joint at the segment's far end) per naming: Anny's, then SMPL's and SMPL-X's. A
# model has the segments whose two joints it names. Forearms and shins come before the segments above them: an
# upper arm is judged with its forearm attached, so a misread forearm must be found first.
LIMB_SEGMENTS = (
    (("lowerarm01.L", "wrist.L"), ("left_elbow", "left_wrist")),
    (("lowerarm01.R", "wrist.R"), ("right_elbow", "right_wrist")),
    (("lowerleg01.L", "foot.L"), ("left_knee", "left_ankle")),
    (("lowerleg01.R", "foot.R"), ("right_knee", "right_ankle")),
    (("upperarm01.L", "lowerarm01.L"), ("left_shoulder", "left_elbow")),
    (("upperarm01.R", "lowerarm01.R"), ("right_shoulder", "right_elbow")),
    (("upperleg01.L", "lowerleg01.L"), ("left_hip", "left_knee")),
    (("upperleg01.R", "lowerleg01.R"), ("right_hip", "right_knee")),
)
BEYOND_WEIGHT = 0.5  # the hand or foot beyond a segment on the scan, at this weight (its own turn is unsure)
MAX_BEND_DEG = 150.0  # a forearm or shin bends at most this far from its upper arm or thigh
DIRECTIONS = 48  # directions tried per segment (evenly spread over the sphere, 30 degrees apart)
FINE_STARTS = 3  # the best directions looked at again, 6 and 12 degrees around
HOPELESS = 0.9  # ... unless the best costs more than this share of the fitted one's: a move needs GAIN, far less
PASSES = 2  # rounds over all segments: an upper arm found again lets its forearm be found again
SAMPLED_VERTICES = 100  # segment vertices scored per direction
LOOSE_POINTS = 300  # unexplained scan points scored, at most (evenly spread over them)
# Metres. Distances are clipped at CLIP (a limb in the air costs the same however far out); scan points farther
# than EXPLAINED from the body without the limb are the ones the limb may cover (clothes keep most scan points
# within a few centimetres of the body). A placement must cost MARGIN less than the fitted one, and at most
# GAIN of its cost: small gains add up to a limb drifting towards a held object or a coat.
CLIP = 0.10
EXPLAINED = 0.04
MARGIN, GAIN = 0.01, 0.75
# A segment whose skin lies farther than OFF_SCAN from the scan, on average, is misplaced; one nearer moves only
# if the move leaves COVERED_MORE less of the scan unexplained.
OFF_SCAN, COVERED_MORE = 0.05, 0.005


@dataclass
class LimbSearch:
    """params: the body with its limbs found again (batch 1); moved (V,) bool: vertices of the limbs that moved."""

    params: BodyParams
    moved: np.ndarray


def limb_segments(body: BodyModel) -> list[tuple[int, int]]:
    """(turned joint, far-end joint) indices of the limb segments `body` names (none for hand models)."""
    index = {name: j for j, name in enumerate(body.joint_names)}
    found = []
    for spellings in LIMB_SEGMENTS:
        for root, end in spellings:
            if root in index and end in index:
                found.append((index[root], index[end]))
                break
    return found


def limb_vertices(body: BodyModel, joint: int, end: int | None = None) -> np.ndarray:
    """(V,) bool: vertices that follow `joint` and its descendants (those above `end` when given: the segment's
    own skin) more than anything else."""
    below = set(body.descendants(joint)) - (set() if end is None else set(body.descendants(end)))
    return body.kept(f"limb {joint} {end}", lambda: (body.skinning_weights[:, sorted(below)].sum(1) > 0.5).cpu().numpy())


def sphere_directions(count: int) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice)."""
    k = np.arange(count) + 0.5
    z = 1 - 2 * k / count
    angle = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1)


def turns_towards(current: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(D, 3) axis-angles of the smallest rotations taking the unit vector `current` (3,) onto each direction."""
    axes = np.cross(current, directions)
    sines = np.linalg.norm(axes, axis=1)
    angles = np.arctan2(sines, directions @ current)
    across = np.cross(current, [1.0, 0.0, 0.0] if abs(current[0]) < 0.9 else [0.0, 1.0, 0.0])  # for opposite ones
    axes = np.where(sines[:, None] > 1e-9, axes / np.maximum(sines, 1e-12)[:, None], across / np.linalg.norm(across))
    return axes * angles[:, None]


def turned_segment(body: BodyModel, params: BodyParams, joint: int, world_turns: torch.Tensor, parent_rotation: torch.Tensor) -> BodyParams:
    """params (batch 1) repeated once per world-frame turn (D, 3) of `joint` about its own head:
    R_j' = G_parent^T T G_parent R_j, G_parent (3, 3) the parent's global rotation."""
    local = axis_angle_to_matrix(params.full_pose[0, joint])
    turns = axis_angle_to_matrix(world_turns)
    new = matrix_to_axis_angle(parent_rotation.T @ turns @ parent_rotation @ local)  # (D, 3)
    count = len(world_turns)
    pose = params.joint_pose.repeat(count, 1, 1)
    pose[:, joint - 1] = new  # joint_pose leaves out the root (joint 0)
    repeated = {name: getattr(params, name).repeat(count, 1) for name in ("global_orient", "shape", "translation", "scale")}
    return BodyParams(joint_pose=pose, **repeated)


def search_limbs(body: BodyModel, params: BodyParams, scan: np.ndarray) -> LimbSearch:
    """The fitted body's limbs turned to where the scan (M, 3) (metres, the model's frame) has them, one segment
    at a time (see the module's docstring). params: batch 1."""
    scan_tree = cKDTree(scan)
    moved = np.zeros(body.vertex_count, dtype=bool)
    segments = limb_segments(body)
    with torch.no_grad():
        posed = Posed.of(body, params)
        for _ in range(PASSES):
            turned_any = False
            for joint, end in segments:
                limb, skin = limb_vertices(body, joint), limb_vertices(body, joint, end)
                current = posed.direction(joint, end)
                # the upper arm or thigh above a forearm or shin: it may not fold onto it (MAX_BEND_DEG)
                above = [posed.direction(upper, joint) for upper, lower in segments if lower == joint]
                # the segment's own skin lies on the scan (the hand or foot beyond it may be turned otherwise);
                # the whole limb covers the scan points
                own, beyond = sampled(skin), sampled(limb & ~skin)
                ids = np.concatenate([own, beyond])
                around = Surroundings.of(posed, limb, scan, scan_tree)

                def costs(directions: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], BodyParams]:
                    turns = torch.as_tensor(turns_towards(current, directions), dtype=params.shape.dtype, device=params.shape.device)
                    tried = turned_segment(body, params, joint, turns, posed.rotations[body.parents[joint]])
                    placed = body(tried, vertex_ids=torch.as_tensor(ids, device=body.device)).vertices.cpu().double().numpy()
                    total, uncovered, off_scan = around.costs(placed, len(own))
                    if above:  # (the fitted direction, first, is kept as it is)
                        folded = directions @ above[0] < np.cos(np.radians(MAX_BEND_DEG))
                        total = np.where(folded & (np.arange(len(directions)) > 0), np.inf, total)
                    return (total, uncovered, off_scan), tried

                coarse = np.concatenate([current[None], sphere_directions(DIRECTIONS)])
                (coarse_costs, _, _), _ = costs(coarse)
                if coarse_costs.min() > HOPELESS * coarse_costs[0]:  # nothing near a move: the limb stays
                    continue
                fine = np.concatenate([current[None], *(nearby(d) for d in coarse[np.argsort(coarse_costs)[:FINE_STARTS]])])
                (fine_costs, fine_uncovered, off_scan), tried = costs(fine)
                best = int(np.argmin(fine_costs))
                # a segment lying on the scan moves only to explain more of it: a forearm may lie on a thigh anywhere
                justified = off_scan[0] > OFF_SCAN or fine_uncovered[best] < fine_uncovered[0] - COVERED_MORE
                if justified and fine_costs[best] < min(fine_costs[0] - MARGIN, GAIN * fine_costs[0]):
                    params = tried.index(best)
                    posed = Posed.of(body, params)
                    moved |= limb
                    turned_any = True
            if not turned_any:  # another pass would find the same
                break
    return LimbSearch(params, moved)


@dataclass
class Posed:
    """A posed body (batch 1) as the search reads it: vertices (V, 3), joints (J, 3), joints' global rotations
    (J, 3, 3) (a tensor), vertices' outward normals (V, 3) and areas (V,)."""

    vertices: np.ndarray
    joints: np.ndarray
    rotations: torch.Tensor
    normals: np.ndarray
    areas: np.ndarray

    def direction(self, joint: int, end: int) -> np.ndarray:
        """(3,) unit vector from `joint` to `end`."""
        offset = self.joints[end] - self.joints[joint]
        return offset / np.linalg.norm(offset)

    @staticmethod
    def of(body: BodyModel, params: BodyParams) -> "Posed":
        out = body(params)
        vertices = out.vertices[0].cpu().double().numpy()
        faces = np.asarray(body.faces)
        return Posed(vertices, out.joints[0].cpu().double().numpy(), out.joint_rotations[0], vertex_normals(vertices, faces),
                     vertex_areas(vertices, faces))  # fmt: skip


def sampled(vertices: np.ndarray) -> np.ndarray:
    """Indices of about SAMPLED_VERTICES of the (V,) bool `vertices`, evenly spread over their order."""
    found = np.flatnonzero(vertices)
    return found[:: max(1, len(found) // SAMPLED_VERTICES)]


def nearby(direction: np.ndarray) -> np.ndarray:
    """(1 + 2 * 8, 3) the unit vector `direction` and 8 around it at each of 6 and 12 degrees."""
    across = np.cross(direction, [1.0, 0.0, 0.0] if abs(direction[0]) < 0.9 else [0.0, 1.0, 0.0])
    across /= np.linalg.norm(across)
    other = np.cross(direction, across)
    angles = np.arange(8) * np.pi / 4
    ring = np.cos(angles)[:, None] * across + np.sin(angles)[:, None] * other
    near = np.concatenate([direction[None]] + [direction + np.tan(np.radians(step)) * ring for step in (6, 12)])
    return near / np.linalg.norm(near, axis=1, keepdims=True)


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,) a third of the area of each vertex's triangles: the surface each vertex stands for."""
    corners = vertices[faces]
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    return np.bincount(faces.ravel(), np.repeat(areas / 3, 3), minlength=len(vertices))


@dataclass
class Surroundings:
    """What a limb's placements are scored against: the scan (its KD-tree), the body without the limb (its
    vertices' KD-tree and outward normals), the scan points that body leaves unexplained (U, 3) and their
    distances to it (U,), and how many scan points the limb would have (its share of the body's surface)."""

    scan_tree: cKDTree
    others_tree: cKDTree
    others_normals: np.ndarray
    loose: torch.Tensor
    loose_apart: np.ndarray
    expected: float

    @staticmethod
    def of(posed: Posed, limb: np.ndarray, scan: np.ndarray, scan_tree: cKDTree) -> "Surroundings":
        """limb (V,) bool: the limb's vertices; scan (M, 3)."""
        others_tree = cKDTree(posed.vertices[~limb])
        apart = others_tree.query(scan)[0]
        unexplained = np.flatnonzero(apart > EXPLAINED)
        loose = unexplained[:: -(-len(unexplained) // LOOSE_POINTS)] if len(unexplained) else unexplained
        expected = float(posed.areas[limb].sum() / posed.areas.sum()) * len(scan) * len(loose) / max(len(unexplained), 1)
        loose_points = torch.as_tensor(scan[loose], dtype=torch.float32)
        return Surroundings(scan_tree, others_tree, posed.normals[~limb], loose_points, apart[loose], max(expected, 1.0))

    def costs(self, placements: np.ndarray, skin: int) -> tuple[np.ndarray, np.ndarray]:
        """(D,) cost of each placement (D, K, 3) of a limb's sampled vertices, the turned segment's own `skin`
        first, in metres: the segment's mean distance to the scan; plus the mean distance of the unexplained scan
        points to the body with this limb, over the scan points the limb would have (distances clipped at CLIP);
        plus how deep, on average, the segment lies inside the rest of the body (a shin folded onto its thigh
        lies on the scan too). Also (D,) the second and the first of those terms alone."""
        off = np.minimum(self.scan_tree.query(placements.reshape(-1, 3))[0], CLIP).reshape(placements.shape[:2])
        on_scan = off[:, :skin].mean(1)
        beyond_on_scan = off[:, skin:].mean(1) if placements.shape[1] > skin else np.zeros(len(placements))
        segment = placements[:, :skin]
        flat = segment.reshape(-1, 3)
        _, nearest = self.others_tree.query(flat)
        depth = np.einsum("ki,ki->k", self.others_tree.data[nearest] - flat, self.others_normals[nearest])
        inside = np.clip(depth, 0.0, CLIP).reshape(segment.shape[:2]).mean(1)
        uncovered = np.zeros(len(placements))
        if len(self.loose):
            limbs = torch.as_tensor(placements, dtype=torch.float32)  # millimetres are plenty
            to_limb = torch.cdist(self.loose[None].expand(len(placements), -1, -1), limbs).amin(2).double().numpy()
            uncovered = np.minimum(np.minimum(to_limb, self.loose_apart), CLIP).sum(1) / self.expected  # (D,)
        return on_scan + BEYOND_WEIGHT * beyond_on_scan + uncovered + inside, uncovered, on_scan
