"""Canonical frames for networks, with an exact stored inverse back to the scan's own frame.

canonical = scale * (rotation @ x) + translation, and x = rotation.T @ (canonical - translation) / scale.
The rotation only ever swaps up axes (a right-handed quarter turn about X, never a mirror), so it is exact
in floating point and the round trip is exact to rounding (1e-12 relative).

Frames we use: our compact networks, Z-up with height 1.0 (Anny is Z-up, metres); the paper's networks,
Y-up with height 1.5 (SMPL is Y-up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scan import METRES_PER_UNIT, Scan, ScanError

AXES = "xyz"
# rotation[input_up][output_up]: a quarter turn about X (right-handed, det +1).
# Y-up -> Z-up is +90 deg about X: y -> z, z -> -y.
QUARTER_TURNS = {
    ("y", "y"): np.eye(3),
    ("z", "z"): np.eye(3),
    ("y", "z"): np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    ("z", "y"): np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
}


@dataclass
class NormalizedFrame:
    """Map between a scan's input frame (its own units and up axis) and a canonical frame.

    rotation (3, 3), scale: canonical units per input unit, translation (3,) in canonical units.
    metres_per_canonical: real size of one canonical unit (None when the input was unitless).
    """

    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    input_units: str
    input_up: str
    up_out: str
    metres_per_canonical: float | None

    def to_canonical(self, x):
        """(..., 3) input-frame coordinates (numpy or torch) -> canonical coordinates, same type."""
        rotation, translation = _like(self.rotation, x), _like(self.translation, x)
        return self.scale * (x @ rotation.T) + translation

    def to_input(self, x):
        """(..., 3) canonical coordinates (numpy or torch) -> input-frame coordinates, same type."""
        rotation, translation = _like(self.rotation, x), _like(self.translation, x)
        return ((x - translation) / self.scale) @ rotation

    def length_to_input(self, length):
        """A canonical length (or array of them) in input units."""
        return length / self.scale

    def to_dict(self) -> dict:
        """JSON-serialisable dict (plain lists and numbers)."""
        return {
            "rotation": self.rotation.tolist(),
            "scale": self.scale,
            "translation": self.translation.tolist(),
            "input_units": self.input_units,
            "input_up": self.input_up,
            "up_out": self.up_out,
            "metres_per_canonical": self.metres_per_canonical,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "NormalizedFrame":
        return cls(**{**data, "rotation": np.array(data["rotation"]), "translation": np.array(data["translation"])})


def _like(array: np.ndarray, x):
    """array as a tensor on x's dtype/device when x is a tensor, else as float64 numpy."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(array, dtype=x.dtype, device=x.device)
    return array


def normalize(scan: Scan, *, up_out: str = "z", height: float | None = 1.0, center: str | None = "bbox") -> NormalizedFrame:
    """Frame that rotates the scan's up axis to `up_out` ("z" or "y"), converts its unit to metres, then (when
    height is given) scales it uniformly so its size equals `height` and (center="bbox") centres its
    bounding box at the origin. Size is the extent along up for bodies and the largest extent for hands
    (scan.kind). height=None keeps metres (needs known units); center=None keeps the origin."""
    if up_out not in ("y", "z"):
        raise ScanError(f"up_out must be 'y' or 'z', got {up_out!r}")
    if center not in ("bbox", None):
        raise ScanError(f"center must be 'bbox' or None, got {center!r}")
    metres_per_unit = METRES_PER_UNIT.get(scan.units)
    if metres_per_unit is None and height is None:
        raise ScanError("the scan is unitless, so it cannot be kept in metres; give a height or load it with units=")
    rotation = QUARTER_TURNS[(scan.up, up_out)]
    extent = scan.extent
    size = extent[AXES.index(scan.up)] if scan.kind == "body" else extent.max()
    scale = metres_per_unit if height is None else height / size
    translation = np.zeros(3)
    if center == "bbox":
        box_centre = (scan.vertices.min(axis=0) + scan.vertices.max(axis=0)) / 2
        translation = -scale * (rotation @ box_centre)
    metres_per_canonical = None if metres_per_unit is None else metres_per_unit / scale
    return NormalizedFrame(rotation, float(scale), translation, scan.units, scan.up, up_out, metres_per_canonical)


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(4, 4) matrix applied to points (N, 3), in float64."""
    return np.asarray(points, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
