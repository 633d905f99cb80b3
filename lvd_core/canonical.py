"""The canonical frame the compact networks work in, and the vertex subset they predict.

Canonical frame: Z up, the body's height (a hand's largest extent) scaled to 1, its bounding box centred at
the origin; `lvd_core.inputs.frame.normalize` makes it from any scan and keeps the exact inverse. Training
builds it from the synthetic scan's own points exactly as inference does from the user's scan.
"""

from __future__ import annotations

import numpy as np
import torch

from .body import BodyModel
from .inputs.frame import NormalizedFrame, normalize
from .inputs.scan import Scan


def canonical_frame(points: np.ndarray, up: str, kind: str, units: str = "m") -> NormalizedFrame:
    """The canonical frame of points (N, 3) given in `units` with up axis `up`.

    Bodies stand upright, so the frame keeps their up axis (as Z); their facing is left to the caller's
    hypotheses. Hands come in any orientation: their frame is their principal axes (see `principal_frame`)."""
    points = np.asarray(points, dtype=np.float64)
    scan = Scan(vertices=points, faces=None, points=points.astype(np.float32), units=units, up=up, source="", kind=kind)
    frame = normalize(scan, up_out="z", height=1.0, center="bbox")
    return principal_frame(points, frame) if kind == "hand" else frame


def scan_frame(scan: Scan) -> NormalizedFrame:
    """The canonical frame of a loaded scan, from its own points, up axis, kind and units: the one call inference
    and training both make, so the network is trained on the frames it is given."""
    return canonical_frame(scan.points, scan.up, scan.kind, scan.units)


def principal_frame(points: np.ndarray, frame: NormalizedFrame) -> NormalizedFrame:
    """`frame` turned so the points' principal axes become Z (longest: along the fingers), X, then Y, each
    pointing where the points' third moment is positive (the heavier tail: palm vs fingertips), right-handed,
    re-centred on the bounding box with the longest extent 1."""
    centred = frame.to_canonical(points)
    centred = centred - centred.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)  # rows: principal directions, largest first
    axes = axes[[1, 2, 0]]  # -> x, y, z with z the longest
    skew = ((centred @ axes.T) ** 3).mean(0)
    axes *= np.where(skew < 0, -1.0, 1.0)[:, None]
    if np.linalg.det(axes) < 0:
        axes[1] *= -1  # the least reliable sign (the flattest axis) gives way to keep a rotation
    aligned = frame.to_canonical(points) @ axes.T
    size = (aligned.max(0) - aligned.min(0)).max()
    centre = (aligned.max(0) + aligned.min(0)) / 2
    scale = frame.scale / size
    rotation = axes @ frame.rotation
    translation = (axes @ frame.translation - centre) / size
    metres = None if frame.metres_per_canonical is None else frame.metres_per_canonical * size
    return NormalizedFrame(rotation, float(scale), translation, frame.input_units, frame.input_up, "z", metres)


def farthest_point_subset(points: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices (count,) of a well-spread subset of points (N, 3): greedy farthest-point sampling."""
    rng = np.random.default_rng(seed)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = rng.integers(len(points))
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for i in range(1, count):
        chosen[i] = int(distance.argmax())
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[i]], axis=1))
    return np.sort(chosen)


def rest_template(body: BodyModel) -> np.ndarray:
    """(V, 3) the neutral body in its rest pose, model frame, metres."""
    with torch.no_grad():
        return body(body.zero_params(1)).vertices[0].cpu().double().numpy()


def canonical_template(body: BodyModel, vertex_ids: np.ndarray) -> np.ndarray:
    """(N, 3) the rest body's vertices `vertex_ids` in its own canonical frame: where the descent starts."""
    rest = rest_template(body)
    frame = canonical_frame(rest, body.up_axis, body.kind)
    return frame.to_canonical(rest[vertex_ids]).astype(np.float32)


def yaw_rotation(angle_rad: float) -> np.ndarray:
    """(3, 3) rotation about the canonical Z (up) axis."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
