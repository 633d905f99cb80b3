"""Grey, shaded, orthographic views of a scan about its up axis, for a person detector (numpy, CPU).

The scan's surface points (canonical frame: Z up, height 1, see `lvd_core.canonical.scan_frame`) are splatted
into a z-buffer; shading comes from the depth image's own gradients (so meshes and point clouds render alike,
with no normals to estimate), Lambert under a light at the camera.

View k looks along `view_direction(yaw)` (horizontal): image column grows along `view_right(yaw)`, image row
grows down (-Z). Yaw 0 looks along +Y, i.e. at the front of a person facing -Y (the trained facing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, minimum_filter

BACKGROUND = 0.15  # grey level behind the person (dark: MediaPipe finds grey figures on it in every view)
AMBIENT = 0.25
MARGIN = 0.06
SEE_THROUGH = 0.02  # depth step (share of the image) beyond which a gap's pixel shows a surface behind  # empty border around the person, share of the image


def view_direction(yaw: float) -> np.ndarray:
    """(3,) unit direction a view at `yaw` (radians about Z) looks along; yaw 0 looks along +Y."""
    return np.array([-np.sin(yaw), np.cos(yaw), 0.0])


def view_right(yaw: float) -> np.ndarray:
    """(3,) the world direction of a view's image columns (left to right): +X at yaw 0."""
    return np.array([np.cos(yaw), np.sin(yaw), 0.0])


@dataclass
class View:
    """One rendered view. image (H, W) uint8 grey; pixel (column, row) = (origin + size * (x, -z)) / pixel
    size: `to_world` inverts it."""

    image: np.ndarray
    yaw: float
    centre: np.ndarray  # (2,) world (horizontal along view_right, z) at the image centre
    pixel_size: float  # world units per pixel

    def to_world(self, columns: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates -> (horizontal coordinate along view_right, height z)."""
        half = self.image.shape[0] / 2
        return self.centre[0] + (columns - half) * self.pixel_size, self.centre[1] - (rows - half) * self.pixel_size

    def to_pixels(self, horizontal: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(horizontal along view_right, z) -> pixel (column, row)."""
        half = self.image.shape[0] / 2
        return half + (horizontal - self.centre[0]) / self.pixel_size, half - (height - self.centre[1]) / self.pixel_size


def render_views(points: np.ndarray, yaws, size: int = 512) -> list[View]:
    """Views (size x size) of points (N, 3) (Z up) from each yaw (radians), all at one scale that fits the
    points' largest horizontal radius and height."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    centre_xy = (low[:2] + high[:2]) / 2
    radius = np.linalg.norm(points[:, :2] - centre_xy, axis=1).max()
    span = max(2 * radius, high[2] - low[2])
    pixel_size = span / (size * (1 - 2 * MARGIN))
    return [_render(points, yaw, centre_xy, (low[2] + high[2]) / 2, pixel_size, size) for yaw in yaws]


def _render(points: np.ndarray, yaw: float, centre_xy: np.ndarray, centre_z: float, pixel_size: float, size: int) -> View:
    right, direction = view_right(yaw), view_direction(yaw)
    centre = np.array([centre_xy @ right[:2], centre_z])
    view = View(np.empty((size, size), np.uint8), yaw, centre, pixel_size)
    columns, rows = view.to_pixels(points @ right, points[:, 2])
    depth = points @ direction
    inside = (columns >= 0) & (columns < size) & (rows >= 0) & (rows < size)
    pixel = rows[inside].astype(np.int64) * size + columns[inside].astype(np.int64)
    zbuffer = np.full(size * size, np.inf)
    np.minimum.at(zbuffer, pixel, depth[inside] / pixel_size)  # depth in pixels, for the gradients below
    zbuffer = zbuffer.reshape(size, size)
    # A pixel the near surface's splats missed shows a farther surface through the gap: drop such pixels (deeper
    # than their neighbourhood's nearest point by a few centimetres), then fill every gap from its neighbours.
    nearest = minimum_filter(zbuffer, size=5)
    zbuffer[zbuffer > nearest + SEE_THROUGH * size] = np.inf
    for _ in range(2):
        zbuffer = np.where(np.isinf(zbuffer), minimum_filter(zbuffer, size=3), zbuffer)
    covered = np.isfinite(zbuffer)
    filled = gaussian_filter(np.where(covered, zbuffer, zbuffer[covered].max() if covered.any() else 0.0), 1.0)
    d_row, d_column = np.gradient(filled)
    d_row, d_column = np.clip(d_row, -8, 8), np.clip(d_column, -8, 8)  # silhouette edges stay shaded, not black
    # Surface normal of a depth image z(column, row) faces the camera with component 1 against the view.
    lambert = 1.0 / np.sqrt(1.0 + d_row**2 + d_column**2)
    grey = np.where(covered, AMBIENT + (1 - AMBIENT) * lambert, BACKGROUND)
    view.image[:] = np.clip(grey * 255, 0, 255).astype(np.uint8)
    return view
