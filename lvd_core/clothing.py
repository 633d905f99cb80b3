"""The body under the clothes: a scan pairing whose pairs pull the body onto skin but not out into clothing.

A clothed scan is the body plus cloth, so the body should lie inside it (the BUFF objective, Zhang et al., CVPR
2017): body surface outside the scan is penalised strongly, body inside the scan weakly (the gap is cloth), and
where the scan is skin (hands, the face, feet in shoes, and wherever the scan lies within a few millimetres of
the body) the body is pulled onto it from both sides. Inside or outside is read from the body's own outward
normals, so holes, open garments and point clouds without normals need no special care.

`clothing_pairing` is the pairing `lvd_core.fit.refine_to_surface` uses by default; its pairs come with these
weights (`pair_weights`). `surface_pairing`, the plain two-way pairing it weighs, pulls the body onto the scan
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class ClothingWeights:
    """Per-pair weights of the clothing-aware objective, relative to a plain pair's 1.

    outside:   the body pokes out of the scan by more than a few `skin` widths (nothing is outside the clothes).
    inside:    the scan lies outside the body by more than a few `skin` widths (cloth, hair, a loose garment).
    skin:      metres: the scan within about this of the body counts as skin, weight 1 from both sides (so sensor
               noise pulls evenly either way).
    bare_skin: metres: the same width on the parts seldom clothed (hands, face, feet in thin shoes), where the
               scan is skin further out.
    """

    outside: float = 2.0
    inside: float = 0.05
    skin: float = 0.005
    bare_skin: float = 0.015


SURFACE_PAIRS = 2000  # body vertices and scan points paired each round of lvd_core.fit.refine_to_surface


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit outward normals of a closed, outward-wound mesh: vertices (V, 3), faces (F, 3), each vertex
    the area-weighted sum of its faces' normals."""
    corners = vertices[faces]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    summed = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(summed, faces[:, k], cross)
    return summed / np.maximum(np.linalg.norm(summed, axis=1), 1e-12)[:, None]


def signed_offsets(points: np.ndarray, normals: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `others` (N, 3) lies from the surface at `points` (N, 3) with outward unit `normals` (N, 3):
    its offset along the normal (N,) (> 0 outside: a scan point over the body, the body inside; < 0 inside) and
    its distance sideways of the normal (N,), metres."""
    step = others - points
    offsets = (step * normals).sum(1)
    return offsets, np.linalg.norm(step - offsets[:, None] * normals, axis=1)


def outside_scan(body_vertices: np.ndarray, body_faces: np.ndarray, scan: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(V,) bool: body vertices outside the scan (M, 3) by more than `tolerance` metres: their nearest scan point
    lies that far inside them along their outward normal, and more inside than sideways (a vertex over a hole,
    whose nearest scan points are on the rim, is not called outside)."""
    nearest = scan[cKDTree(scan).query(body_vertices, k=1)[1]]
    offsets, sideways = signed_offsets(body_vertices, vertex_normals(body_vertices, body_faces), nearest)
    return (offsets < -tolerance) & (sideways < -offsets)


def pair_weights(offsets: np.ndarray, sideways: np.ndarray, bare: np.ndarray, weights: ClothingWeights = ClothingWeights()) -> np.ndarray:
    """(N,) weights of (body point, scan point) pairs from the scan point's offset outside the body (N,) metres
    (`signed_offsets`), its distance sideways of the body's normal (N,) metres, and whether the body point is on
    a seldom-clothed part (N,) bool. A scan point more sideways than in or out (the rim of a hole, a missing
    sole) says nothing about inside or outside: it pulls weakly."""
    width = np.where(bare, weights.bare_skin, weights.skin)
    skin = np.exp(-np.square(offsets / width))
    outside = (offsets < 0.0) & (sideways < -offsets)
    return skin + (1.0 - skin) * np.where(outside, weights.outside, weights.inside)


def bare_vertices(body) -> np.ndarray:
    """(V,) bool: the body's vertices on parts seldom clothed: hands, feet (shoes are thin) and the face (the head
    without its hair cover). A hand model is bare throughout."""
    from .synth.surface import body_surface

    surface = body_surface(body)
    return surface.part_mask("hand", "foot") | (surface.part_mask("head") & (surface.hair < 0.5))


def surface_pairing(body: BodyModel, scan: np.ndarray, seed: int = 0):
    """The plain pairing of `lvd_core.fit.refine_with_pairs` for a scan (M, 3), metres: sampled body vertices with their nearest
    scan points, and sampled scan points with their nearest body vertices (two-way). The scan's KD-tree is
    built once; the body's, over its moving vertices, every round (milliseconds for Anny's 13,718)."""
    rng = np.random.default_rng(seed)
    body_sample = rng.choice(body.vertex_count, min(SURFACE_PAIRS, body.vertex_count), replace=False)
    scan_sample = scan[rng.choice(len(scan), min(SURFACE_PAIRS, len(scan)), replace=False)]
    scan_tree = cKDTree(scan)

    def pairs(current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nearest_scan = scan[scan_tree.query(current[body_sample], k=1)[1]]
        nearest_body = cKDTree(current).query(scan_sample, k=1)[1]
        return np.concatenate([body_sample, nearest_body]), np.concatenate([nearest_scan, scan_sample])

    return pairs


def clothing_pairing(body, scan: np.ndarray, seed: int = 0, weights: ClothingWeights = ClothingWeights()):
    """The pairing of `lvd_core.fit.refine_with_pairs` for a clothed scan (M, 3), metres: sampled body vertices
    with their nearest scan points and sampled scan points with their nearest body vertices (the two-way
    `surface_pairing`), each pair weighted by `pair_weights` from the scan point's offset along the
    body's normal there."""
    plain = surface_pairing(body, scan, seed)
    faces = np.asarray(body.faces)
    bare = bare_vertices(body)

    def pairs(current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, goals = plain(current)
        offsets, sideways = signed_offsets(current[ids], vertex_normals(current, faces)[ids], goals)
        return ids, goals, pair_weights(offsets, sideways, bare[ids], weights)

    return pairs
