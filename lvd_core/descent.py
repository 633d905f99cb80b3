"""Learned vertex descent: every vertex walks against the offset the network predicts at its own position.

    x_v <- x_v - f_v(x_v)        (step 1, no clamp; K = 5 for images, 10 for scans and hands)

Batched over inputs; the loop stays on the device (no host round trip) unless a tolerance is asked for.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .nets.base import LVDNetwork, diagonal_of_all_offsets

# (features, points (B, N, 3), vertex_ids) -> each point's offset for its own vertex (B, N, 3)
OwnOffsets = Callable[[object, Tensor, Tensor | None], Tensor]


@dataclass
class DescentResult:
    vertices: Tensor  # (B, V, 3) final positions
    iterations_run: int
    trajectory: Tensor | None  # (iterations_run + 1, B, V, 3), start included; None unless asked for
    largest_step: float  # largest vertex displacement (Euclidean) of the last iteration


def descend(network: LVDNetwork, features: object, start: Tensor, iterations: int = 10,
            tolerance: float | None = None, return_trajectory: bool = False,
            vertex_ids: Tensor | None = None) -> DescentResult:
    """Runs vertex descent with the network's own-offset head.

    start: (B, V, 3) (e.g. the template), or one point (B, 1, 3) / (3,) that every vertex starts from.
    tolerance: stop once the largest vertex step falls under it (one host sync per iteration).
    vertex_ids: (V,) descend only these vertices (V = len(vertex_ids)); all of them when None.
    """
    return run_descent(network.predict_own_offsets, network, features, start, iterations, tolerance,
                       return_trajectory, vertex_ids)


def descend_naive(network: LVDNetwork, features: object, start: Tensor, iterations: int = 10,
                  tolerance: float | None = None, return_trajectory: bool = False,
                  vertex_ids: Tensor | None = None) -> DescentResult:
    """`descend` the authors' way: the full (B, V, V, 3) output each step, keeping its diagonal.

    O(V) times the head cost and memory of `descend`; a reference for tests and benchmarks.
    """

    def full_output_diagonal(features: object, points: Tensor, ids: Tensor | None) -> Tensor:
        all_offsets = network.predict_all_offsets(features, points)
        return diagonal_of_all_offsets(all_offsets, ids)

    return run_descent(full_output_diagonal, network, features, start, iterations, tolerance,
                       return_trajectory, vertex_ids)


@torch.no_grad()
def run_descent(own_offsets: OwnOffsets, network: LVDNetwork, features: object, start: Tensor, iterations: int,
                tolerance: float | None, return_trajectory: bool, vertex_ids: Tensor | None) -> DescentResult:
    """The descent loop, given the function that predicts each vertex's own offset."""
    vertex_count = network.vertex_count if vertex_ids is None else len(vertex_ids)
    vertices = starting_positions(start, network.batch_size(features), vertex_count)
    trajectory = [vertices] if return_trajectory else None
    largest_step = torch.zeros((), device=vertices.device)
    iterations_run = 0
    while iterations_run < iterations:
        step = own_offsets(features, vertices, vertex_ids)
        vertices = vertices - step
        largest_step = torch.linalg.vector_norm(step, dim=-1).max()
        iterations_run += 1
        if trajectory is not None:
            trajectory.append(vertices)
        if tolerance is not None and largest_step.item() < tolerance:
            break
    return DescentResult(vertices=vertices, iterations_run=iterations_run,
                         trajectory=None if trajectory is None else torch.stack(trajectory),
                         largest_step=float(largest_step))


def starting_positions(start: Tensor, batch_size: int, vertex_count: int) -> Tensor:
    """start (B, V, 3), (B, 1, 3), (1, V, 3), (V, 3) or (3,) -> a fresh (B, V, 3) tensor."""
    if start.shape[-1] != 3 or start.dim() > 3:
        raise ValueError(f"start must be (B, V, 3), (B, 1, 3) or (3,), got {tuple(start.shape)}")
    try:
        return start.expand(batch_size, vertex_count, 3).clone()
    except RuntimeError:
        raise ValueError(f"start {tuple(start.shape)} does not broadcast to "
                         f"(B={batch_size}, V={vertex_count}, 3)") from None
