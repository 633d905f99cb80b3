"""Synthetic 3D scans of a posed body: clothing, hair, loose garments, holes, noise, outliers, uneven density.

A scan is built from the posed body surface in the model's own frame (metres, the model's up axis), so the
ground truth (`vertices_gt`, `joints_gt`, `params`) lies in the same frame as the points. `to_file_frame` /
`from_file_frame` convert to and from the units and up axis of a scan file (cm / mm, Y-up) exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from pykdtree.kdtree import KDTree

from ..body import BodyParams
from .surface import (
    PART_NAMES,
    body_surface,
    face_normals_and_areas,
    is_hand,
    joint_indices,
    sample_surface,
    smooth_field,
    vertex_normals,
)


@dataclass(frozen=True)
class ScanRealism:
    """How far a synthetic scan departs from the clean body surface (ranges are sampled uniformly per scan).

    Distances in metres; probabilities per scan. `ScanRealism.clean()` is the bare surface, well sampled.
    """

    points: int = 10_000  # surface samples before holes remove some (outliers are added on top)
    mesh_probability: float = 0.0  # return the displaced mesh with faces instead of a point cloud
    tight_clothes_probability: float = 0.8
    clothing_offset: tuple[float, float] = (0.003, 0.025)  # mean thickness; the field varies it, capped below
    max_clothing_offset: float = 0.04
    loose_garment_probability: float = 0.2  # a skirt / coat hanging from the hips, bridging the legs
    hair_probability: float = 0.5
    hair_thickness: tuple[float, float] = (0.01, 0.05)
    hole_count: tuple[int, int] = (0, 4)
    hole_radius: tuple[float, float] = (0.03, 0.12)
    missing_soles_probability: float = 0.5
    missing_head_top_probability: float = 0.2
    missing_side_probability: float = 0.1
    density_variation: float = 1.0  # amplitude of the log-density field (0: area-uniform sampling)
    noise: tuple[float, float] = (0.0, 0.004)  # Gaussian sensor noise sigma
    outlier_fraction: tuple[float, float] = (0.0, 0.01)
    object_in_hand_probability: float = 0.4  # hands only: a cylinder or ball held in the palm
    wrist_cut_probability: float = 0.6  # hands only: the scan ends at the wrist at a random height

    @staticmethod
    def clean(points: int = 10_000) -> "ScanRealism":
        """The bare body surface, area-uniform, no clothes, holes, noise or outliers."""
        return ScanRealism(
            points=points, tight_clothes_probability=0.0, loose_garment_probability=0.0, hair_probability=0.0,
            hole_count=(0, 0), missing_soles_probability=0.0, missing_head_top_probability=0.0,
            missing_side_probability=0.0, density_variation=0.0, noise=(0.0, 0.0), outlier_fraction=(0.0, 0.0),
            object_in_hand_probability=0.0, wrist_cut_probability=0.0,
        )  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "ScanRealism":
        return ScanRealism(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})


@dataclass
class SyntheticScan:
    """points (N, 3) float32 and faces (F, 3) int64 or None, in the model frame (metres, model up axis);
    vertices_gt (V, 3) and joints_gt (J, 3) float32 the unclothed posed body; params the body's BodyParams (B=1);
    info what was applied (clothing, holes, ...)."""

    points: np.ndarray
    faces: np.ndarray | None
    vertices_gt: np.ndarray
    joints_gt: np.ndarray
    params: BodyParams
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Clothing, hair and garments: per-vertex displacements of the posed body mesh.


def tight_clothing_offsets(surface, rng: np.random.Generator, realism: ScanRealism) -> tuple[np.ndarray, dict]:
    """(V,) outward offsets of tight clothes: a shirt (sleeves of random length), trousers or shorts, shoes;
    a smooth field of the rest-pose position varies the thickness, within [0, max_clothing_offset]."""
    sleeves = ["upper_arm", "forearm"][: rng.integers(0, 3)]
    legs = ["thigh", "shin"][: rng.integers(1, 3)]
    covered = surface.part_mask("torso", *sleeves, *legs)
    thickness = rng.uniform(*realism.clothing_offset)
    variation = 0.5 * thickness * smooth_field(surface.template, rng, wavelength=rng.uniform(0.2, 0.6))
    offsets = np.where(covered, np.clip(thickness + variation, 0.0, realism.max_clothing_offset), 0.0)
    offsets[surface.part_mask("foot")] = rng.uniform(0.003, 0.015)  # shoes
    return offsets, {"sleeves": len(sleeves), "trouser_parts": len(legs), "thickness": thickness}


def hair_offsets(surface, rng: np.random.Generator, realism: ScanRealism) -> np.ndarray:
    """(V,) outward offsets of a hair volume on the top and back of the head, varying smoothly."""
    thickness = rng.uniform(*realism.hair_thickness)
    return surface.hair * thickness * (1 + 0.3 * smooth_field(surface.template, rng, 0.15))


def loose_garment(
    vertices: np.ndarray, surface, hip_centre: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """A skirt or coat hanging from the hips: below the waist the lower body is pushed out radially (about the
    vertical axis through the hip centre) onto a flared surface that starts at the widest part of the hips in
    each direction, which bridges the legs. vertices (V, 3) -> (V, 3)."""
    length = rng.uniform(0.2, 0.65)
    flare = rng.uniform(0.1, 0.45)
    up = surface.up
    rel = vertices - hip_centre
    height = rel @ up
    radial = rel - height[:, None] * up
    radius = np.sqrt((radial * radial).sum(1))
    region = surface.part_mask("torso", "thigh", "shin") & (height < 0.0) & (height > -length)
    sector = angle_sectors(radial, up, surface.forward)
    hips = region & (height > -0.2)
    hip_radius = np.zeros(ANGLE_SECTORS, dtype=radius.dtype)
    np.maximum.at(hip_radius, sector[hips], radius[hips])
    # Cloth spans the gaps between the buttocks and legs: each sector at least its neighbours' radius.
    hip_radius = np.maximum.reduce([np.roll(hip_radius, k) for k in (-1, 0, 1)])
    target = hip_radius[sector] + flare * np.maximum(-height - 0.1, 0.0)
    ramp = np.clip(-height / 0.1, 0.0, 1.0)  # from the waist down, no step at the waistline
    grow = np.where(region, ramp * np.maximum(target - radius, 0.0), 0.0)
    direction = radial / np.maximum(radius, 1e-9)[:, None]
    return vertices + grow[:, None] * direction, {"garment_length": length, "garment_flare": flare}


ANGLE_SECTORS = 24


def angle_sectors(radial: np.ndarray, up: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(N,) sector index (0..ANGLE_SECTORS-1) of the direction of horizontal vectors radial (N, 3) about `up`."""
    side = np.cross(up, forward)
    angle = np.arctan2(radial @ side, radial @ forward)
    return ((angle + np.pi) / (2 * np.pi) * ANGLE_SECTORS).astype(np.int64) % ANGLE_SECTORS


def torn_faces(displacement: np.ndarray, faces: np.ndarray, limit: float = 0.05) -> np.ndarray:
    """(F,) bool: faces whose corners moved apart by more than `limit` (a garment's hem, the gap between legs
    under a skirt); a scanner sees no surface there, so they are dropped."""
    moved = np.linalg.norm(displacement, axis=1)[faces]
    return moved.max(1) - moved.min(1) > limit


def clothed_surface(
    vertices: np.ndarray, joints: np.ndarray, body, rng: np.random.Generator, realism: ScanRealism
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The posed body dressed: vertices (V, 3) -> clothed vertices (V, 3), kept faces mask (F,), info."""
    surface = body_surface(body)
    normals = vertex_normals(vertices, surface)
    offsets = np.zeros(len(vertices))
    info: dict = {}
    if not is_hand(body):
        if rng.uniform() < realism.tight_clothes_probability:
            offsets, info = tight_clothing_offsets(surface, rng, realism)
        if rng.uniform() < realism.hair_probability:
            offsets = offsets + hair_offsets(surface, rng, realism)
            info["hair"] = True
    clothed = vertices + offsets[:, None] * normals
    if not is_hand(body) and rng.uniform() < realism.loose_garment_probability and legs_hang_down(body, joints):
        hips = joints[joint_indices(body, "upperleg01", "_hip")].mean(0)
        clothed, garment = loose_garment(clothed, surface, hips, rng)
        info.update(garment)
    keep_faces = ~torn_faces(clothed - vertices, surface.faces)
    return clothed, keep_faces, info


def legs_hang_down(body, joints: np.ndarray) -> bool:
    """A skirt only makes sense when both knees are well below the hips (not sitting or crouching)."""
    up = body_surface(body).up
    hips = joints[joint_indices(body, "upperleg01", "_hip")] @ up
    knees = joints[joint_indices(body, "lowerleg01", "_knee")] @ up
    return bool((hips - knees).min() > 0.25)


# ---------------------------------------------------------------------------------------------------------
# Holes and missing parts: masks over points with their normals and body parts.


REFERENCE_BODY_SIZE = 1.7  # metres: the body size ScanRealism's distances are given for
# A scan keeps at least this fraction of its points: holes and missing parts that would remove more are skipped.
MIN_KEPT_FRACTION = 0.3


def missing_parts_mask(
    points: np.ndarray, normals: np.ndarray, part: np.ndarray, surface, rng: np.random.Generator, realism: ScanRealism
) -> tuple[np.ndarray, dict]:
    """(N,) bool, True = keep. points, normals (N, 3), part (N,) part index. Removes the soles (facing down),
    the top of the head (facing up), one side (facing a random horizontal direction) and spherical holes."""
    keep = np.ones(len(points), dtype=bool)
    facing_up = normals @ surface.up
    info: dict = {}
    if rng.uniform() < realism.missing_soles_probability:
        keep &= ~((part == PART_NAMES.index("foot")) & (facing_up < -0.5))
        info["missing_soles"] = True
    if rng.uniform() < realism.missing_head_top_probability:
        keep &= ~((part == PART_NAMES.index("head")) & (facing_up > 0.6))
        info["missing_head_top"] = True
    if rng.uniform() < realism.missing_side_probability:
        side = random_horizontal_direction(surface.up, rng)
        keep &= normals @ side < rng.uniform(0.5, 0.8)
        info["missing_side"] = side.tolist()
    holes = rng.integers(realism.hole_count[0], realism.hole_count[1] + 1)
    if holes:
        centres = points[rng.integers(0, len(points), holes)]
        # Radii are given for a 1.7 m body: scale them to this one (a hand's holes are ~10x smaller).
        size = (points.max(0) - points.min(0)).max() / REFERENCE_BODY_SIZE
        radii = rng.uniform(*realism.hole_radius, size=holes) * size
        inside = (((points[:, None] - centres[None]) ** 2).sum(-1) < radii**2).any(1)
        keep &= ~inside
    info["holes"] = int(holes)
    if keep.mean() < MIN_KEPT_FRACTION:
        return np.ones(len(points), dtype=bool), {"holes": 0, "skipped_missing_parts": True}
    return keep, info


def random_horizontal_direction(up: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector perpendicular to `up` (3,)."""
    v = rng.normal(size=3)
    v -= (v @ up) * up
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------------------
# Hands: an object held in the palm and a cut at the wrist.


def palm_frame(body, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posed palm: wrist (3,), centre (3,), unit normal out of the palm (3,), unit axis across the knuckles (3,)."""
    wrist = joints[joint_indices(body, "wrist")[0]]
    index = joints[joint_indices(body, "finger2-1", "index1")[0]]
    little = joints[joint_indices(body, "finger5-1", "pinky1")[0]]
    centre = (wrist + index + little) / 3
    across = (little - index) / np.linalg.norm(little - index)
    normal = np.cross(index - wrist, little - wrist)
    # This cross product points out of the palm of a right hand and out of the back of a left one (mirrored).
    normal *= -1.0 if body.name.endswith("left") else 1.0
    return wrist, centre, normal / np.linalg.norm(normal), across


def held_object_points(
    body, joints: np.ndarray, hand_points: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A cylinder (across the palm) or a ball in front of the palm. -> object surface points (M, 3), the mask
    (N,) of hand points it leaves visible (points in contact with or inside it are occluded), info."""
    _, centre, normal, across = palm_frame(body, joints)
    count = len(hand_points) // 3
    if rng.uniform() < 0.5:
        radius = rng.uniform(0.015, 0.04)
        axis_centre = centre + normal * (radius + 0.01)
        u = rng.uniform(-1, 1, count) * rng.uniform(0.05, 0.1)
        angle = rng.uniform(0, 2 * np.pi, count)
        side = np.cross(across, normal)
        points = axis_centre + u[:, None] * across + radius * (np.cos(angle)[:, None] * normal + np.sin(angle)[:, None] * side)
        rel = hand_points - axis_centre
        distance = np.linalg.norm(rel - (rel @ across)[:, None] * across, axis=1)
        info = {"object": "cylinder", "radius": radius}
    else:
        radius = rng.uniform(0.025, 0.05)
        ball_centre = centre + normal * (radius + 0.01)
        direction = rng.normal(size=(count, 3))
        points = ball_centre + radius * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        distance = np.linalg.norm(hand_points - ball_centre, axis=1)
        info = {"object": "ball", "radius": radius}
    visible_hand = distance > radius + 0.005
    # The object is hidden where the hand wraps it.
    object_distance, _ = KDTree(hand_points).query(points, k=1)
    return points[object_distance > 0.006], visible_hand, info


def wrist_cut_mask(body, joints: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(N,) keep mask: the points beyond a plane across the forearm, 3 cm before to 1 cm after the wrist."""
    wrist = joints[joint_indices(body, "wrist")[0]]
    middle = joints[joint_indices(body, "finger3-1", "middle1")[0]]
    along = (middle - wrist) / np.linalg.norm(middle - wrist)
    height = rng.uniform(-0.03, 0.01)
    return (points - wrist) @ along > height, {"wrist_cut": height}


# ---------------------------------------------------------------------------------------------------------
# Sensor effects


def add_noise_and_outliers(points: np.ndarray, rng: np.random.Generator, realism: ScanRealism) -> np.ndarray:
    """Gaussian noise on every point, then outliers uniform in the 10%-enlarged bounding box. (N, 3) -> (N', 3)."""
    noisy = points + rng.normal(scale=rng.uniform(*realism.noise), size=points.shape)
    count = int(rng.uniform(*realism.outlier_fraction) * len(points))
    low, high = points.min(0), points.max(0)
    margin = 0.1 * (high - low)
    outliers = rng.uniform(low - margin, high + margin, size=(count, 3))
    return np.concatenate([noisy, outliers])


# ---------------------------------------------------------------------------------------------------------


def posed_body(body, params: BodyParams) -> tuple[np.ndarray, np.ndarray]:
    """params (B=1) -> posed vertices (V, 3) and joints (J, 3), float32 numpy (all scan maths is float32)."""
    with torch.no_grad():
        out = body(params.to(device=body.device, dtype=body.dtype))
    return out.vertices[0].cpu().numpy().astype(np.float32), out.joints[0].cpu().numpy().astype(np.float32)


def make_scan(body, params: BodyParams, rng: np.random.Generator, *, realism: ScanRealism = ScanRealism()) -> SyntheticScan:
    """A synthetic scan of the body posed by `params` (batch of 1), in the model's frame."""
    vertices, joints = posed_body(body, params)
    surface = body_surface(body)
    clothed, keep_faces, info = clothed_surface(vertices, joints, body, rng, realism)
    faces = surface.faces[keep_faces]
    as_mesh = rng.uniform() < realism.mesh_probability
    if as_mesh:
        points, normals, part = clothed, vertex_normals(clothed, surface), surface.vertex_part
    else:
        face_normals, areas = face_normals_and_areas(clothed, faces)
        density = np.exp(realism.density_variation * smooth_field(surface.template[faces[:, 0]], rng, 0.5))
        points, face, _ = sample_surface(clothed, faces, areas * density, realism.points, rng)
        normals, part = face_normals[face], surface.vertex_part[faces[face, 0]]
    keep, holes = missing_parts_mask(points, normals, part, surface, rng, realism)
    info.update(holes)
    extra = np.zeros((0, 3))
    if is_hand(body):
        if rng.uniform() < realism.wrist_cut_probability:
            cut, cut_info = wrist_cut_mask(body, joints, points, rng)
            keep &= cut
            info.update(cut_info)
        if rng.uniform() < realism.object_in_hand_probability:
            extra, visible, object_info = held_object_points(body, joints, points, rng)
            keep &= visible
            info.update(object_info)
    if keep.mean() < MIN_KEPT_FRACTION:  # cuts and occluders together took too much: keep the whole surface
        keep[:] = True
    if as_mesh:
        points, faces = kept_submesh(points, faces, keep)
        scan_points = add_noise_and_outliers(np.concatenate([points, extra]), rng, realism)
        faces = faces if len(scan_points) == len(points) else None  # outliers or an object: no longer a mesh
    else:
        scan_points, faces = add_noise_and_outliers(np.concatenate([points[keep], extra]), rng, realism), None
    return SyntheticScan(
        points=scan_points.astype(np.float32),
        faces=faces,
        vertices_gt=vertices.astype(np.float32),
        joints_gt=joints.astype(np.float32),
        params=params.detach().to(device="cpu"),
        info=info,
    )


def kept_submesh(vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces whose three corners are kept, re-indexed onto the vertices they use.
    vertices (V, 3), faces (F, 3), keep (V,) -> (V', 3), (F', 3)."""
    faces = faces[keep[faces].all(1)]
    used = np.unique(faces)
    new_index = np.full(len(vertices), -1, dtype=np.int64)
    new_index[used] = np.arange(len(used))
    return vertices[used], new_index[faces]


# ---------------------------------------------------------------------------------------------------------
# Scan-file frames: units and up axis


UNIT_SCALE = {"m": 1.0, "cm": 100.0, "mm": 1000.0}
# Z-up -> Y-up turns (x, y, z) into (x, z, -y): a Z-up body facing -Y then faces +Z, as Y-up scans do.
_Z_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def up_axis_rotation(from_up: str, to_up: str) -> np.ndarray:
    """(3, 3) rotation taking coordinates with up axis `from_up` ("y" / "z") to `to_up`."""
    if from_up == to_up:
        return np.eye(3)
    return _Z_TO_Y_UP if (from_up, to_up) == ("z", "y") else _Z_TO_Y_UP.T


def to_file_frame(points: np.ndarray, model_up: str, *, units: str = "m", up_axis: str = "z") -> np.ndarray:
    """Model-frame points (N, 3) (metres, up axis `model_up`) -> a scan file's `units` and `up_axis`."""
    return (points @ up_axis_rotation(model_up, up_axis).T * UNIT_SCALE[units]).astype(points.dtype)


def from_file_frame(points: np.ndarray, model_up: str, *, units: str = "m", up_axis: str = "z") -> np.ndarray:
    """The inverse of `to_file_frame`: file points (N, 3) -> model frame (metres, `model_up`)."""
    return (points / UNIT_SCALE[units] @ up_axis_rotation(up_axis, model_up).T).astype(points.dtype)


def write_scan_file(scan: SyntheticScan, model_up: str, path: str | Path, *, units: str = "m", up_axis: str = "z") -> Path:
    """Writes the scan as PLY / OBJ (mesh when it has faces, else a point cloud) in the given frame."""
    import trimesh

    points = to_file_frame(scan.points, model_up, units=units, up_axis=up_axis)
    geometry = trimesh.Trimesh(points, scan.faces, process=False) if scan.faces is not None else trimesh.PointCloud(points)
    path = Path(path)
    geometry.export(path)
    return path
