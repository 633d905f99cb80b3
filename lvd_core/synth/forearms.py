"""Synthetic hand scans as structured-light scanners take them: the forearm attached, sometimes in a sleeve.

The hand models end at the wrist in an open loop of vertices; the forearm continues from that loop as a
tapered elliptic cylinder, along the loop's normal, widening towards the elbow. Everything is in the model
frame (metres), like `lvd_core.synth.scans`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .scans import SyntheticScan
from .surface import body_surface, face_normals_and_areas


def wrist_opening(body) -> np.ndarray:
    """Indices of the hand mesh's boundary vertices: the open loop at the wrist (edges of a single face)."""
    faces = body_surface(body).faces
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return np.unique(unique[counts == 1])


def forearm_points(
    body, vertices: np.ndarray, rng: np.random.Generator, *, density: float, length: tuple[float, float] = (0.2, 0.3),
    sleeve_probability: float = 0.5,
) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Points (M, 3) on a forearm continuing the posed hand `vertices` (V, 3) from its wrist opening, `density`
    points per square metre; info (length, sleeve). The cross-section starts as the opening's ellipse and widens
    towards the elbow (rounder there, as forearms are); a sleeve, when drawn, covers it from a random distance
    on, a few millimetres to centimetres thick, with wrinkles and the cuff's ring visible."""
    loop = vertices[wrist_opening(body)].astype(np.float64)
    centre = loop.mean(0)
    _, singular, axes = np.linalg.svd(loop - centre, full_matrices=False)
    major, minor, normal = axes
    if (vertices.mean(0) - centre) @ normal > 0:
        normal = -normal  # away from the hand
    semi = singular[:2] * np.sqrt(2.0 / len(loop))  # an ellipse's semi-axes from its points' spread
    arm_length = rng.uniform(*length)
    growth = np.array([rng.uniform(0.25, 0.55), rng.uniform(0.5, 1.0)])  # major, minor: rounder at the elbow
    info: dict = {"forearm_length": arm_length}

    def surface(distance, angle, thickness):
        radii = semi[None] * (1 + growth[None] * (distance / arm_length)[:, None]) + thickness[:, None]
        return (centre + distance[:, None] * normal + (radii[:, 0] * np.cos(angle))[:, None] * major
                + (radii[:, 1] * np.sin(angle))[:, None] * minor)  # fmt: skip

    area = np.pi * semi.sum() * (1 + growth.mean() / 2) * arm_length  # lateral area of the tapered ellipse
    count = int(density * area)
    distance = arm_length * rng.uniform(size=count)
    angle = rng.uniform(0, 2 * np.pi, count)
    thickness = np.zeros(count)
    parts = []
    if rng.uniform() < sleeve_probability:
        start, depth = rng.uniform(0.02, 0.2), rng.uniform(0.004, 0.02)
        wrinkle = depth * 0.3 * np.sin(rng.integers(3, 8) * angle + rng.uniform(0, 2 * np.pi)) * np.sin(40 * distance)
        thickness = np.where(distance > start, depth + wrinkle, 0.0)
        ring = int(density * np.pi * semi.sum() * depth) + 1
        parts.append(surface(np.full(ring, start), rng.uniform(0, 2 * np.pi, ring), depth * rng.uniform(size=ring)))
        info.update(sleeve_start=start, sleeve_thickness=depth)
    parts.append(surface(distance, angle, thickness))
    return np.concatenate(parts), info


def with_forearm(body, scan: SyntheticScan, rng: np.random.Generator, *, length: tuple[float, float] = (0.2, 0.3),
                 sleeve_probability: float = 0.5, noise: float = 0.0005) -> SyntheticScan:  # fmt: skip
    """The hand scan with a forearm attached at the wrist (see `forearm_points`), sampled as densely as the hand
    (area-uniform scans), with `noise` metres of Gaussian noise. Make the hand scan without a wrist cut
    (ScanRealism.wrist_cut_probability 0), or the forearm floats beyond the gap. Points become a cloud."""
    _, areas = face_normals_and_areas(scan.vertices_gt, body_surface(body).faces)
    density = len(scan.points) / areas.sum()
    arm, info = forearm_points(body, scan.vertices_gt, rng, density=density, length=length, sleeve_probability=sleeve_probability)
    arm = arm + rng.normal(scale=noise, size=arm.shape)
    points = np.concatenate([scan.points, arm.astype(np.float32)])
    return replace(scan, points=points, faces=None, info={**scan.info, **info, "forearm_points": len(arm)})
