"""Per-body surface facts the generators share: topology, vertex normals, body parts, smooth random fields.

Everything here is numpy and computed once per body model (cached), so a sample costs only array arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse

# Body parts by substrings of joint names (Anny's MakeHuman names, SMPL's and MANO's). A vertex belongs to the
# part of its strongest skinning joint; the first matching rule wins.
PART_RULES = (
    ("hand", ("wrist", "finger", "metacarpal", "_hand", "thumb", "index", "middle", "ring", "pinky")),
    ("head", ("head", "neck", "eye", "jaw")),
    ("forearm", ("lowerarm", "elbow")),
    ("upper_arm", ("shoulder", "upperarm")),
    ("shin", ("lowerleg", "knee")),
    ("foot", ("foot", "toe", "ankle")),
    ("thigh", ("upperleg", "_hip")),
    ("torso", ("spine", "root", "pelvis", "clavicle", "collar", "chest")),
)
PART_NAMES = tuple(name for name, _ in PART_RULES) + ("other",)
UP_VECTORS = {"y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
# Where the body faces at rest: Anny (Z-up) looks along -Y, SMPL and MANO (Y-up) along +Z.
FORWARD_VECTORS = {"y": (0.0, 0.0, 1.0), "z": (0.0, -1.0, 0.0)}


def joint_part(joint_name: str) -> str:
    """The body part a joint's skinned vertices belong to ("other" when no rule matches)."""
    name = joint_name.lower()
    for part, keys in PART_RULES:
        if any(key in name for key in keys):
            return part
    return "other"


@dataclass(frozen=True)
class BodySurface:
    """faces (F, 3) int64; incidence (V, F) sparse vertex-face matrix; vertex_part (V,) index into PART_NAMES;
    template (V, 3) the neutral rest mesh (coordinates for smooth fields that follow the body); up, forward (3,);
    hair (V,) in [0, 1] where hair grows."""

    faces: np.ndarray
    incidence: scipy.sparse.csr_matrix
    vertex_part: np.ndarray
    template: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    hair: np.ndarray

    def part_mask(self, *parts: str) -> np.ndarray:
        """(V,) bool: vertices in any of `parts`."""
        return np.isin(self.vertex_part, [PART_NAMES.index(p) for p in parts])


@lru_cache(maxsize=8)
def body_surface(body) -> BodySurface:
    """The cached surface facts of a body model."""
    faces = np.asarray(body.faces, dtype=np.int64)
    vertex_count = body.vertex_count
    rows = faces.reshape(-1)
    cols = np.repeat(np.arange(len(faces)), 3)
    incidence = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(vertex_count, len(faces)))
    joint_parts = np.array([PART_NAMES.index(joint_part(n)) for n in body.joint_names])
    vertex_part = joint_parts[body.skinning_weights.detach().cpu().numpy().argmax(1)]
    template = body(body.zero_params(1)).vertices[0].detach().cpu().numpy().astype(np.float32)
    up, forward = np.array(UP_VECTORS[body.up_axis]), np.array(FORWARD_VECTORS[body.up_axis])
    head = vertex_part == PART_NAMES.index("head")
    return BodySurface(faces, incidence, vertex_part, template, up, forward, hair_coverage(template, head, up, forward))


def hair_coverage(template: np.ndarray, head: np.ndarray, up: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(V,) in [0, 1]: where hair grows, decided on the rest template so the face stays bare: above the brow
    (about 4 cm over the head centre) or behind the ears, with ramps so there is no step at the hairline.
    template (V, 3), head (V,) bool."""
    if not head.any():
        return np.zeros(len(head), dtype=np.float32)
    rel = template - template[head].mean(0)
    height = rel @ up
    behind = -(rel @ forward)
    coverage = np.clip(np.maximum((height - 0.02) / 0.04, (behind - 0.02) / 0.04 + (height + 0.04) / 0.08 - 1), 0, 1)
    return np.where(head, coverage, 0.0).astype(np.float32)


def face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) (v1 - v0) x (v2 - v0): normal direction, length twice the area (written out: np.cross is slow)."""
    corners = np.take(vertices, faces, axis=0)  # (F, 3, 3); np.take is ~4x faster than fancy indexing
    a = corners[:, 1] - corners[:, 0]
    b = corners[:, 2] - corners[:, 0]
    return np.stack(
        [a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2], a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]],
        axis=1,
    )


def face_normals_and_areas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vertices (V, 3), faces (F, 3) -> unit face normals (F, 3), areas (F,)."""
    cross = face_cross(vertices, faces)
    double_area = np.sqrt((cross * cross).sum(1))
    return cross / np.maximum(double_area, 1e-12)[:, None], 0.5 * double_area


def vertex_normals(vertices: np.ndarray, surface: BodySurface) -> np.ndarray:
    """(V, 3) unit normals: the area-weighted sum of the adjacent faces' normals."""
    summed = surface.incidence @ face_cross(vertices, surface.faces)
    return summed / np.maximum(np.sqrt((summed * summed).sum(1)), 1e-12)[:, None]


def smooth_field(positions: np.ndarray, rng: np.random.Generator, wavelength: float, terms: int = 8) -> np.ndarray:
    """A smooth random scalar field at `positions` (N, 3): a sum of random plane waves of about `wavelength`
    metres, with zero mean and unit variance over space. -> (N,)."""
    directions = (rng.normal(size=(terms, 3)) * (2 * np.pi / wavelength)).astype(positions.dtype)
    phases = rng.uniform(0, 2 * np.pi, terms).astype(positions.dtype)
    return np.sin(positions @ directions.T + phases).sum(1) * np.float32(np.sqrt(2.0 / terms))


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, weights: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` random points on the triangles, face f drawn with probability ∝ weights[f].
    -> points (N, 3), face index (N,), barycentric coordinates (N, 3)."""
    cdf = np.cumsum(weights)
    face = np.minimum(np.searchsorted(cdf, rng.uniform(0, cdf[-1], count)), len(faces) - 1)
    r1 = np.sqrt(rng.uniform(size=count))
    r2 = rng.uniform(size=count)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1).astype(vertices.dtype)  # uniform per triangle
    corners = np.take(vertices, np.take(faces, face, axis=0), axis=0)  # (N, 3, 3)
    points = (bary[:, :, None] * corners).sum(1)
    return points, face, bary


def joint_indices(body, *keys: str) -> list[int]:
    """Indices of the joints whose lower-case name contains any of `keys` (in joint order)."""
    return [j for j, name in enumerate(body.joint_names) if any(key in name.lower() for key in keys)]


def is_hand(body) -> bool:
    """True for hand-only models (Anny hands, MANO)."""
    return not joint_indices(body, "upperleg", "knee")
