"""(4, 4) placement matrices on numpy arrays: no bpy, so both Blender's side and the fitting process use them."""

from __future__ import annotations

import numpy as np


def rigid_and_scale(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """(4, 4) similarity -> (the same without its uniform scale, the scale)."""
    scale = float(abs(np.linalg.det(matrix[:3, :3])) ** (1.0 / 3.0))
    rigid = np.array(matrix, dtype=np.float64)
    rigid[:3, :3] /= scale
    return rigid, scale


def translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def scaled_about(point: np.ndarray, factor: float) -> np.ndarray:
    """(4, 4) uniform scaling by `factor` that keeps `point` in place."""
    return translation(point) @ np.diag([factor] * 3 + [1.0]) @ translation(-np.asarray(point))


def bottom_centre(vertices: np.ndarray) -> np.ndarray:
    """(3,) the centre of the vertices' box in x and y, at their lowest z."""
    low, high = vertices.min(0), vertices.max(0)
    return np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])
