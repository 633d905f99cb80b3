"""The compact image LVD network: a person crop (RGB + mask) in, offsets for a vertex subset out.

The photo frame (all image networks and `lvd_core.photo` work in it), for the 256 x 256 person crop
(`lvd_core.inputs.image.crop_person`: the square of 1.1 x the larger side of the person's box):
- x to the crop's right, y up (image up), z towards the camera: a right-handed frame;
- units such that the crop spans [-1, 1] in x and y: 1 unit = 128 crop pixels, crop pixel (u, v) (u right,
  v down, origin at the top-left corner) is at x = u / 128 - 1, y = 1 - v / 128;
- z: depth in the same units (metres times crop pixels per metre at the body's centre, / 128), relative to
  the body's centre (the mean depth of its vertices), since a photo gives depth only up to a shift.
Weak perspective ties x, y and z to one scale; the synthetic cameras are 2.5-8 m away, where that holds to a
few per cent. `PhotoFrame` maps a synthetic photo's model-frame points into this frame and back.

The network is CompactScanLVD's design in 2D (see `lvd_core.nets.compact`): the same vertex subset and the
same shared, vertex-conditioned head; the encoder is five strided conv blocks (GroupNorm: at equal wall time,
5 CPU minutes, 146 against 151 mm held-out error without it, one run each) over (4, 256, 256) giving maps at
128, 64, 32, 16 and 8 px, all sampled bilinearly at the query point's (x, y) (the paper's query: project the
point, append its coordinates), plus a global feature (avg + max pooling of the two coarsest maps) that tells
the head where the whole body is. The descent starts at the rest body facing the camera, 1.82 units tall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..synth.renders import project
from ..synth.surface import FORWARD_VECTORS, UP_VECTORS
from .base import register_network
from .compact import VertexConditionedLVD

CROP_PX = 256
PX_PER_UNIT = CROP_PX / 2
# The crop is 1.1 x the person's larger side, which spans 2 units: the person is 2 / 1.1 = 1.82 units (233 px).
PERSON_UNITS = 2 / 1.1


def photo_axes(up_axis: str) -> np.ndarray:
    """(3, 3) rows: the photo frame's x, y, z axes in model coordinates for a camera in front of the body
    (image right = the body's left, y = model up, z = the body's forward, towards the camera)."""
    up, forward = np.array(UP_VECTORS[up_axis]), np.array(FORWARD_VECTORS[up_axis])
    return np.stack([np.cross(up, forward), up, forward])


def photo_template(rest_vertices: np.ndarray, up_axis: str) -> np.ndarray:
    """Rest body (V, 3) model frame, metres -> (V, 3) in the photo frame: facing the camera, its larger side
    PERSON_UNITS long, its x-y box centred, its mean depth at z = 0."""
    points = rest_vertices @ photo_axes(up_axis).T
    low, high = points.min(0), points.max(0)
    centre = np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, points[:, 2].mean()])
    return ((points - centre) * PERSON_UNITS / (high - low)[:2].max()).astype(np.float32)


@dataclass(frozen=True)
class PhotoFrame:
    """A synthetic photo's model frame <-> the photo frame of its crop. camera: `lvd_core.synth.renders`'s
    dict; crop_origin (2,) photo px and crop_scale (crop px per photo px): the crop's CropTransform;
    centre_depth: the mean camera depth of the body's vertices, metres."""

    camera: dict
    crop_origin: np.ndarray
    crop_scale: float
    centre_depth: float

    @classmethod
    def of(cls, camera: dict, transform, body_vertices: np.ndarray) -> PhotoFrame:
        """The frame of a render (camera) cropped by `transform` (CropTransform), centred on body_vertices (V, 3)."""
        _, depth = project(camera, body_vertices.astype(np.float64))
        origin = np.array([transform.origin_x, transform.origin_y])
        return cls(camera, origin, float(transform.scale), float(depth.mean()))

    @property
    def units_per_metre(self) -> float:
        """Photo-frame units per metre at the body's centre depth."""
        return self.camera["focal_px"] * self.crop_scale / (self.centre_depth * PX_PER_UNIT)

    def from_model(self, points: np.ndarray) -> np.ndarray:
        """Model-frame points (N, 3) -> photo frame (N, 3): x, y by the camera's perspective projection."""
        uv, depth = project(self.camera, points.astype(np.float64))
        crop_uv = (uv - self.crop_origin) * self.crop_scale
        x = crop_uv[:, 0] / PX_PER_UNIT - 1
        y = 1 - crop_uv[:, 1] / PX_PER_UNIT
        z = (self.centre_depth - depth) * self.units_per_metre
        return np.stack([x, y, z], axis=1)

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """Photo-frame points (N, 3) -> model frame (N, 3): the exact inverse of `from_model`."""
        depth = self.centre_depth - points[:, 2] / self.units_per_metre
        crop_uv = np.stack([points[:, 0] + 1, 1 - points[:, 1]], axis=1) * PX_PER_UNIT
        uv = crop_uv / self.crop_scale + self.crop_origin
        camera_points = np.concatenate([(uv - self.camera["principal_px"]) * depth[:, None] / self.camera["focal_px"],
                                        depth[:, None]], axis=1)
        return (camera_points - np.asarray(self.camera["t"])) @ np.asarray(self.camera["R"])


def image_grid_coordinates(points: Tensor) -> Tensor:
    """Photo-frame points (B, N, 3) -> grid_sample coordinates (B, N, 1, 2) for maps covering the crop
    (align_corners=False: -1 and 1 are the crop's outer edges, as in the frame; rows run down, y up)."""
    return torch.stack([points[..., 0], -points[..., 1]], dim=-1)[:, :, None]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Halves the resolution: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


@register_network("CompactImageLVD")
class CompactImageLVD(VertexConditionedLVD):
    """Image LVD for a vertex subset: crops (B, 4, 256, 256) -> features; pairs (x, v) -> offset (3)."""

    def __init__(
        self,
        vertex_count: int,
        template: list | None = None,
        in_channels: int = 4,
        channels: tuple = (16, 32, 64, 96, 128),
        global_width: int = 128,
        embed_width: int = 64,
        hidden: int = 256,
        depth: int = 3,
    ):
        super().__init__()
        self.vertex_count = vertex_count
        self.settings = dict(
            vertex_count=vertex_count, in_channels=in_channels, channels=list(channels), global_width=global_width,
            embed_width=embed_width, hidden=hidden, depth=depth,
        )  # fmt: skip
        self.levels = nn.ModuleList(_conv_block(c_in, c_out) for c_in, c_out in zip((in_channels,) + tuple(channels[:-1]), channels))
        self._init_global(channels, global_width)
        self._init_head(template, embed_width, sum(channels) + 3 + global_width, hidden, depth)

    def encode(self, crops: Tensor) -> dict:
        """(B, C, 256, 256) network images -> {"maps": five (B, c, 256 / 2^k, ...) maps, "global": (B, G)}."""
        return self._encode_levels(crops)

    def point_features(self, features: dict, points: Tensor) -> Tensor:
        """(B, N, 3) photo-frame points -> (B, N, F): every map sampled at the point's (x, y), the point, the
        global feature."""
        coords = image_grid_coordinates(points)
        sampled = [
            F.grid_sample(m, coords, mode="bilinear", padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)
            for m in features["maps"]
        ]
        glob = features["global"][:, None].expand(-1, points.shape[1], -1)
        return torch.cat(sampled + [points, glob], dim=-1)
