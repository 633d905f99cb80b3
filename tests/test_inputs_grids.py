"""Distance grids against brute force (lvd_core.inputs.grids)."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from lvd_core.canonical import yaw_rotation
from lvd_core.inputs.grids import (
    COMPACT_BODY, PAPER_BODY, PAPER_HAND, compact_grid, distance_grid, grid_axes, grid_tensor, turned_grids,
)


def brute_force_distance(points: np.ndarray, box_min, box_max, resolution: int) -> np.ndarray:
    """(R, R, R) unsquared distance, sample (ix, iy, iz) at box_min + i * step, by checking every point."""
    axes = grid_axes(box_min, box_max, resolution)
    samples = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return np.sqrt(((samples[..., None, :] - points) ** 2).sum(-1)).min(-1)


def brute_force_grid(points, preset) -> np.ndarray:
    d = brute_force_distance(points, preset.box_min, preset.box_max, preset.resolution)
    d = d**2 if preset.squared else d
    channels = [np.clip(d, 0, t) * f for t, f in zip(preset.thresholds, preset.factors)]
    return np.stack(channels + [d] * preset.raw_channel)


def surface_points(count: int, radius: float, seed: int = 0) -> np.ndarray:
    """Points on a sphere (a closed surface, like a scan) plus a little noise."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    return radius * directions / np.linalg.norm(directions, axis=1, keepdims=True) + rng.normal(scale=0.01, size=(count, 3))


@pytest.mark.parametrize("preset", [PAPER_BODY, PAPER_HAND, COMPACT_BODY], ids=["paper_body", "paper_hand", "compact"])
def test_exact_grid_matches_brute_force(preset):
    tiny = replace(preset, resolution=12, exact_band=None)
    points = surface_points(300, radius=0.3 * preset.box_max)
    expected = brute_force_grid(points, tiny)
    assert np.allclose(distance_grid(points, **vars(tiny)), expected, rtol=1e-5, atol=1e-6)


def test_sample_sits_at_the_cell_corner_and_volume_is_x_y_z():
    box_min, box_max, resolution = -0.8, 0.8, 8
    step = (box_max - box_min) / resolution
    point = np.array([[box_min + 2 * step, box_min + 5 * step, box_min + 7 * step]])
    grid = distance_grid(point, box_min=box_min, box_max=box_max, resolution=resolution, thresholds=(1.0,), factors=(1.0,))
    assert grid[-1, 2, 5, 7] == 0 and np.count_nonzero(grid[-1] == 0) == 1
    assert grid[-1, 3, 5, 7] == pytest.approx(step**2)


def test_banded_grid_is_exact_in_the_band_and_a_tight_upper_bound_beyond():
    preset = replace(PAPER_BODY, resolution=24, exact_band=0.2)
    points = surface_points(400, radius=0.5)
    exact = brute_force_distance(points, preset.box_min, preset.box_max, preset.resolution)
    banded = np.sqrt(distance_grid(points, **vars(preset))[-1])
    cell_diagonal = np.sqrt(3) * (preset.box_max - preset.box_min) / preset.resolution
    in_band = exact < preset.exact_band
    assert np.allclose(banded[in_band], exact[in_band], atol=1e-6)
    assert np.all(banded >= exact - 1e-6) and np.all(banded <= exact + cell_diagonal + 1e-6)
    assert (~in_band).any()


def test_points_outside_the_box_still_give_upper_bounds():
    preset = replace(PAPER_BODY, resolution=16, exact_band=0.3)
    points = surface_points(200, radius=1.0)  # mostly outside [-0.8, 0.8]^3
    exact = brute_force_distance(points, preset.box_min, preset.box_max, preset.resolution)
    banded = np.sqrt(distance_grid(points, **vars(preset))[-1])
    in_band = exact < preset.exact_band
    assert np.all(banded >= exact - 1e-6) and in_band.any()
    assert np.allclose(banded[in_band], exact[in_band], atol=1e-6)


def test_grid_tensor_shapes_and_torch_input():
    points = torch.from_numpy(surface_points(500, radius=0.4)).float()
    tensor = grid_tensor(points, COMPACT_BODY)
    assert tensor.shape == (1, COMPACT_BODY.channels, 32, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() >= 0 and tensor.max() <= 1  # compact channels are scaled to [0, 1]


def test_preset_channel_counts():
    assert PAPER_BODY.channels == PAPER_HAND.channels == 7
    assert COMPACT_BODY.channels == 4


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match=r"\(M, 3\)"):
        COMPACT_BODY.grid(np.zeros((0, 3)))


def test_turned_grids_match_grids_of_the_turned_points():
    """Quarter turns and mirrors of the axes are read off one wider grid (any jitter first), others computed."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5000, 3)) * [0.1, 0.1, 0.3]
    preset = compact_grid(resolution=16)
    turns = []
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product([1.0, -1.0], repeat=3):
            q = np.zeros((3, 3))
            q[np.arange(3), axes] = signs
            turns += [q, yaw_rotation(np.radians(10)) @ q]
    turns.append(yaw_rotation(np.radians(45)))  # no quarter turn of another: a grid of its own
    for got, turn in zip(turned_grids(preset, points, turns), turns):
        assert np.abs(got - preset.grid(points @ turn)).max() < 1e-5
