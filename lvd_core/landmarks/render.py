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
from scipy.ndimage import (
    binary_dilation,
    binary_erosion,
    distance_transform_edt,
    gaussian_filter,
    minimum_filter,
    zoom,
)

BACKGROUND = 0.15  # grey level behind the person (dark: MediaPipe finds grey figures on it in every view)
AMBIENT = 0.25
MARGIN = 0.06
GRID_PER_SQRT_POINT = 2.0
MIN_GRID = 128
FILL_STEPS = 4  # gaps up to twice this many pixels wide are filled
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
    points' largest horizontal radius and height. Sparse points are rendered on a coarser grid (see
    grid_size) and scaled up, so the surface shows no gaps."""
    points = np.asarray(points, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    centre_xy = (low[:2] + high[:2]) / 2
    radius = np.linalg.norm(points[:, :2] - centre_xy, axis=1).max()
    span = max(2 * radius, high[2] - low[2]) / (1 - 2 * MARGIN)
    grid = grid_size(len(points), size)
    return [_render(points, yaw, centre_xy, (low[2] + high[2]) / 2, span, grid, size) for yaw in yaws]


def grid_size(count: int, size: int) -> int:
    """Pixels across the render of `count` points: about two points on each pixel a person covers (a person
    covers ~0.3 of the image's pixels from the front, half of their points face the view), at most `size`."""
    return int(np.clip(GRID_PER_SQRT_POINT * np.sqrt(count), MIN_GRID, size))


def _render(points: np.ndarray, yaw: float, centre_xy: np.ndarray, centre_z: float, span: float, grid: int, size: int) -> View:
    right, direction = view_right(yaw), view_direction(yaw)
    centre = np.array([centre_xy @ right[:2], centre_z])
    coarse = View(np.empty((grid, grid), np.uint8), yaw, centre, span / grid)
    columns, rows = coarse.to_pixels(points @ right, points[:, 2])
    depth = points @ direction / coarse.pixel_size  # in pixels, for the gradients below
    inside = (columns >= 0) & (columns < grid) & (rows >= 0) & (rows < grid)
    pixel = rows[inside].astype(np.int64) * grid + columns[inside].astype(np.int64)
    zbuffer = np.full(grid * grid, np.inf)
    np.minimum.at(zbuffer, pixel, depth[inside])
    zbuffer = zbuffer.reshape(grid, grid)
    # A pixel the near surface's points missed shows a farther surface through the gap: drop such pixels (deeper
    # than their neighbourhood's nearest point by a few centimetres), then fill every gap from its neighbours.
    hit = np.isfinite(zbuffer)
    if not hit.any():
        return View(np.full((size, size), round(BACKGROUND * 255), np.uint8), yaw, centre, span / size)
    covered = binary_erosion(binary_dilation(hit, iterations=FILL_STEPS), iterations=FILL_STEPS, border_value=1)
    # A pixel the near surface's points missed shows a farther surface through the gap: such pixels (deeper than
    # their neighbourhood's nearest point by a few centimetres) and the gaps take their nearest front pixel's depth.
    front = hit & (zbuffer <= minimum_filter(zbuffer, size=2 * FILL_STEPS + 1) + SEE_THROUGH * grid)
    nearest_front = distance_transform_edt(~front, return_distances=False, return_indices=True)
    filled = gaussian_filter(zbuffer[tuple(nearest_front)], 1.0)
    d_row, d_column = np.gradient(filled)
    d_row, d_column = np.clip(d_row, -3, 3), np.clip(d_column, -3, 3)  # silhouette edges stay shaded, not black
    # The normal of a depth image z(column, row) is (-dz/dcolumn, -dz/drow, 1) normalised; the light is at the camera.
    lambert = 1.0 / np.sqrt(1.0 + d_row**2 + d_column**2)
    grey = np.where(covered, AMBIENT + (1 - AMBIENT) * lambert, BACKGROUND)
    if grid != size:
        grey = zoom(grey, size / grid, order=1, grid_mode=True, mode="nearest")
    image = np.clip(grey * 255, 0, 255).astype(np.uint8)
    return View(image, yaw, centre, span / size)
