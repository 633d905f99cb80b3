"""Distance grids: the volumetric input of the scan networks.

Grid sample i along an axis sits at box_min + i * (box_max - box_min) / resolution (the cell corner, the
paper's convention) and the volume is stored V[ix, iy, iz]. Channel k = clamp(d, 0, thresholds[k]) *
factors[k]; with raw_channel the last channel is d itself. d is the distance from the sample to the
nearest of the given points, squared when squared=True (the paper).

Speed: a KD-tree query costs more the farther the sample is from the points, and most of a 128^3 grid is
far. A Euclidean distance transform over the occupied cells (scipy.ndimage, with indices) first bounds every
sample's distance from both sides; only samples whose lower bound is inside a band go to the KD-tree,
which also stops searching at the band. Outside the band the value is the upper bound: the distance to an
actual point of the nearest occupied cell, at most one cell diagonal above exact (measured on the sample
body scan: mean 0.12, p99 0.5 cell). The band is the largest threshold when there is no raw channel (the grid is
then exact), else `exact_band` (None: a KD-tree query for every sample, exact and about 10x slower).
PAPER_* use a band of 0.1, which makes their first channels exact (see benchmarks/results_inputs_scan.md).

KD-tree queries run on `workers` threads (scipy's cKDTree; -1: every core). The default is 1, for training
data workers that already fill the cores; the fit of a single scan passes -1.

The paper measured distances to the scan's vertices; pass `Scan.points` (area-weighted surface samples) or
the vertices, both work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class GridPreset:
    """All settings of `distance_grid` for one network family (see the module docstring)."""

    box_min: float
    box_max: float
    resolution: int
    thresholds: tuple[float, ...]
    factors: tuple[float, ...]
    squared: bool
    raw_channel: bool
    exact_band: float | None  # unsquared distance; None = exact everywhere

    @property
    def channels(self) -> int:
        return len(self.thresholds) + int(self.raw_channel)

    def grid(self, points, workers: int = 1) -> np.ndarray:
        """(C, R, R, R) float32 grid of (M, 3) canonical-frame points; workers: KD-tree threads (-1: all)."""
        return distance_grid(points, **asdict(self), workers=workers)


_PAPER_FACTORS = (100.0, 50.0, 20.0, 20.0, 15.0, 10.0)
# The paper's scan networks: Y-up, height 1.5, centred bounding box.
PAPER_BODY = GridPreset(-0.8, 0.8, 128, (0.01, 0.02, 0.05, 0.1, 0.15, 0.2), _PAPER_FACTORS, True, True, 0.1)
PAPER_HAND = GridPreset(-1.2, 1.2, 128, (0.001, 0.002, 0.01, 0.05, 0.1, 0.5), _PAPER_FACTORS, True, True, 0.1)

def compact_grid(resolution: int = 32, box_half_size: float = 0.6) -> GridPreset:
    """Our compact networks' grid: Z-up, height (hands: largest extent) 1.0, centred bounding box, resolution^3
    cells over [-box_half_size, box_half_size]^3; unsquared distance clamped at 0.5, 1, 2 and 4 cells, each
    scaled to [0, 1]; no raw channel, so the grid is exact and cheap (the KD-tree stops at 4 cells). A network
    reads the grid of its own `resolution` and `box_half_size` (CompactScanLVD settings)."""
    cell = 2 * box_half_size / resolution
    thresholds = tuple(cells * cell for cells in (0.5, 1, 2, 4))
    return GridPreset(-box_half_size, box_half_size, resolution, thresholds, tuple(1 / t for t in thresholds), False, False, None)


COMPACT_BODY = compact_grid()  # 32^3 cells of 0.0375: the shipped networks'


def turned_grids(preset: GridPreset, points: np.ndarray, turns: list[np.ndarray]) -> list[np.ndarray]:
    """preset.grid(points @ t) for each turn t (3, 3) of points (M, 3), the work shared: turns that differ by a
    quarter turn or a mirror of the axes (t = base @ q, q a signed permutation) are read off one grid of
    points @ base with one more sample on each axis, whose lattice is symmetric about the box's centre (a
    sample s sees points @ q as s @ q.T sees the points). Turns by other angles get a grid of their own."""
    if preset.box_min != -preset.box_max:
        return [preset.grid(points @ t) for t in turns]
    step = (preset.box_max - preset.box_min) / preset.resolution
    wide_preset = replace(preset, box_max=preset.box_max + step, resolution=preset.resolution + 1)
    bases, wide = [], []
    grids = []
    for turn in turns:
        for base, base_grid in zip(bases, wide):
            q = base.T @ turn
            if _is_signed_permutation(q):
                break
        else:
            base, q = turn, np.eye(3)
            bases.append(base)
            wide.append(base_grid := wide_preset.grid(points @ base))
        grids.append(_read_turned(base_grid, np.rint(q).astype(np.int64)))
    return grids


def _is_signed_permutation(q: np.ndarray) -> bool:
    """Whether q (3, 3) permutes and negates axes: one entry of +-1 per row and column, the rest 0."""
    rounded = np.rint(q)
    return bool(np.allclose(q, rounded, atol=1e-9) and (np.abs(rounded).sum(0) == 1).all() and (np.abs(rounded).sum(1) == 1).all())


def _read_turned(wide: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The (C, R, R, R) grid of points @ q from the (C, R + 1, R + 1, R + 1) grid of the points on the symmetric
    lattice: sample s's coordinate k after s @ q.T is sign_k * s[axis_k], i.e. index i[axis_k] or R - i[axis_k]."""
    size = wide.shape[1] - 1
    index = np.indices((size,) * 3)
    axis, sign = np.abs(q).argmax(1), q[np.arange(3), np.abs(q).argmax(1)]
    wide_index = [index[axis[k]] if sign[k] > 0 else size - index[axis[k]] for k in range(3)]
    return wide[:, wide_index[0], wide_index[1], wide_index[2]]


def grid_axes(box_min, box_max, resolution: int) -> np.ndarray:
    """(3, R) sample coordinates per axis (cell corners); box_min/box_max are scalars or (3,)."""
    box_min = np.broadcast_to(np.asarray(box_min, np.float64), (3,))
    box_max = np.broadcast_to(np.asarray(box_max, np.float64), (3,))
    step = (box_max - box_min) / resolution
    return box_min[:, None] + np.arange(resolution) * step[:, None]


def distance_grid(
    points,
    *,
    box_min,
    box_max,
    resolution: int,
    thresholds,
    factors,
    squared: bool = True,
    raw_channel: bool = True,
    exact_band: float | None = None,
    workers: int = 1,
) -> np.ndarray:
    """(C, R, R, R) float32 encoded distances from grid samples to (M, 3) points (numpy or torch).

    C = len(thresholds) + raw_channel. exact_band (unsquared distance, box units) only matters with
    raw_channel: beyond it the raw distance is the EDT upper bound described in the module docstring.
    """
    points = _as_points(points)
    if len(thresholds) != len(factors):
        raise ValueError(f"need one factor per threshold, got {len(thresholds)} thresholds and {len(factors)} factors")
    axes = grid_axes(box_min, box_max, resolution)
    largest = max(thresholds)
    saturation = np.sqrt(largest) if squared else largest  # unsquared distance where every channel is clamped
    # Without a raw channel nothing beyond the saturation distance is seen, so that is the band to be exact in.
    distance = nearest_distance(points, axes, exact_band=exact_band if raw_channel else saturation, workers=workers)
    if squared:
        distance = np.square(distance, out=distance)
    grid = np.empty((len(thresholds) + int(raw_channel), *distance.shape), np.float32)
    for channel, (threshold, factor) in enumerate(zip(thresholds, factors)):
        np.multiply(np.minimum(distance, threshold), factor, out=grid[channel])
    if raw_channel:
        grid[-1] = distance
    return grid


def _as_points(points) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (M, 3) array, got shape {points.shape}")
    return points


def _grid_samples(axes: np.ndarray, flat_index=None) -> np.ndarray:
    """(R^3, 3) sample positions in V[ix, iy, iz] order, or (K, 3) those at flat indices (K,)."""
    if flat_index is None:
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    index = np.unravel_index(flat_index, (axes.shape[1],) * 3)
    return np.stack([axis[i] for axis, i in zip(axes, index)], axis=-1)


def nearest_distance(points, axes, *, exact_band=None, workers: int = 1) -> np.ndarray:
    """(R, R, R) float32 unsquared distance from each grid sample to the nearest of (M, 3) points.

    Exact within exact_band (None: everywhere, a KD-tree query per sample). Beyond it, the EDT upper bound
    (>= exact_band); only the samples whose EDT lower bound is inside the band go to the KD-tree.
    """
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)  # both off: a 3-5x faster build
    if exact_band is None:
        distance, _ = tree.query(_grid_samples(axes), k=1, workers=workers)
        return distance.reshape((axes.shape[1],) * 3).astype(np.float32)
    distance, lower = _distance_bounds(points, axes)
    near = np.flatnonzero(lower < exact_band)
    exact, _ = tree.query(_grid_samples(axes, near), k=1, distance_upper_bound=exact_band, workers=workers)
    distance.flat[near] = np.minimum(exact, distance.flat[near])  # inf (beyond the band) keeps the bound
    return distance


def _distance_bounds(points, axes) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower): (R, R, R) float32 bounds of the distance from each sample to the nearest point.

    Each point is assigned to its nearest sample (its cell; points outside the grid to the nearest border
    cell) and a Euclidean distance transform finds the nearest occupied cell of every sample. upper: the
    distance to one of that cell's points, within one cell diagonal of exact (for points inside the grid).
    lower: the distance to that cell's sample minus half a cell diagonal (a point is at most that far from
    its cell's sample, and clipping to the grid only brings points closer).
    """
    shape = (axes.shape[1],) * 3
    step = axes[:, 1] - axes[:, 0]
    cell = np.clip(np.rint((points - axes[:, 0]) / step), 0, shape[0] - 1).astype(np.int64)
    flat_cell = np.ravel_multi_index(cell.T, shape)
    representative = np.zeros(np.prod(shape), np.int64)
    representative[flat_cell] = np.arange(len(points))  # one of the cell's points, whichever
    empty = np.ones(shape, bool)
    empty.flat[flat_cell] = False
    nearest_cell = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
    nearest_point = points.astype(np.float32)[representative[np.ravel_multi_index(tuple(nearest_cell), shape)]]
    to_point = np.zeros(shape, np.float32)
    to_cell = np.zeros(shape, np.float32)
    for axis in range(3):
        along = axes[axis].astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        to_point += (along - nearest_point[..., axis]) ** 2
        to_cell += (along - axes[axis].astype(np.float32)[nearest_cell[axis]]) ** 2
    half_diagonal = np.float32(np.linalg.norm(step) / 2 * 1.001)  # 0.1 % margin for float32 rounding
    return np.sqrt(to_point), np.sqrt(to_cell) - half_diagonal


def grid_tensor(points, preset: GridPreset) -> torch.Tensor:
    """(1, C, R, R, R) float32 tensor of preset's grid for (M, 3) canonical points (numpy or torch)."""
    return torch.from_numpy(preset.grid(points)).unsqueeze(0)
