"""Synthetic scans of two people, for the checks that refuse them (lvd_core.scan_checks): two bodies side by side,
and one carried across the other's arms. Point clouds (N, 3) in the model frame (metres, Z up, facing -Y)."""

from __future__ import annotations

import numpy as np

# A quarter turn about Y: a standing body (up +Z) lies along -X, face up (its front, -Y, stays -Y).
LYING = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])


def side_by_side(first: np.ndarray, second: np.ndarray, gap: float = 0.3) -> np.ndarray:
    """Points of two standing bodies (each (N, 3), Z up), the second beside the first along +X with `gap`
    metres between them, both on the first's floor."""
    shift = np.array([first[:, 0].max() - second[:, 0].min() + gap, 0.0, first[:, 2].min() - second[:, 2].min()])
    return np.concatenate([first, second + shift])


def carried(carrier: np.ndarray, held: np.ndarray, height_share: float = 0.6) -> np.ndarray:
    """Points of the carrier (N, 3) standing (Z up, facing -Y) with `held` (M, 3) lying across their arms: turned to
    lie along X, its middle in front of the carrier's chest at `height_share` of the carrier's height."""
    lying = held @ LYING.T
    low, high = carrier.min(0), carrier.max(0)
    target = np.array([(low[0] + high[0]) / 2, low[1] - (np.ptp(lying[:, 1]) / 2), low[2] + height_share * (high[2] - low[2])])
    return np.concatenate([carrier, lying - (lying.min(0) + lying.max(0)) / 2 + target])
