"""The protocol every LVD network follows, the registry that names them, and the shared "own rows" head.

An LVD network encodes an input once (`encode`), then maps a 3D point p to V x 3 numbers: block v is the
clamped vector from vertex v to p. Descent only ever needs block v at vertex v's own position (the diagonal),
so `predict_own_offsets` multiplies the hidden vector at x_v by the 3 rows of the last layer that belong to v
instead of computing all 3V outputs (the authors' way, kept as `predict_all_offsets`).

Networks whose last layer is a linear map (a Linear, or a 1x1 Conv1d as in the paper) implement two hooks,
`point_hidden` and `offset_layer`, and inherit both predictions from here.
"""

from typing import Callable

import torch
from torch import Tensor, nn

_NETWORK_REGISTRY: dict[str, type] = {}


def register_network(name: str) -> Callable[[type], type]:
    """Class decorator: records `cls` under `name` so checkpoints can rebuild it from their config."""

    def record(cls: type) -> type:
        known = _NETWORK_REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"network name {name!r} is already registered for {known.__module__}.{known.__qualname__}")
        _NETWORK_REGISTRY[name] = cls
        cls.registered_name = name
        return cls

    return record


def registered_network(name: str) -> type | None:
    """The class registered under `name`, or None."""
    return _NETWORK_REGISTRY.get(name)


def registered_names() -> list[str]:
    """All registered network names, sorted."""
    return sorted(_NETWORK_REGISTRY)


def linear_parts(layer: nn.Module) -> tuple[Tensor, Tensor | None, Tensor]:
    """The last layer as output = scale * (matrix @ hidden) + bias: matrix (3V, H), scale (3V,) or None, bias (3V,).

    Works for nn.Linear (3V, H), a 1x1 nn.Conv1d (3V, H, 1), and weight-normed layers stored as weight_g /
    weight_v (the paper's, or torch's legacy weight_norm): for those the matrix is the direction v and the
    scale g / ||v||, so the effective weight (3V x H, 85 M numbers for the voxel net) is never materialised.
    """
    if hasattr(layer, "weight_v") and hasattr(layer, "weight_g"):
        direction = layer.weight_v.reshape(layer.weight_v.shape[0], -1)
        scale = layer.weight_g.reshape(-1) / torch.linalg.vector_norm(direction, dim=1)
        return direction, scale, layer.bias
    weight = layer.weight
    return weight.reshape(weight.shape[0], -1), None, layer.bias


def own_vertex_outputs(layer: nn.Module, hidden: Tensor, vertex_ids: Tensor | None = None) -> Tensor:
    """Each point's 3 outputs for its own vertex, from that vertex's 3 rows of the last layer only.

    hidden: (B, N, H), the last layer's input at point n, which belongs to vertex vertex_ids[n]
            (vertex n when vertex_ids is None; then N = V).
    Returns (B, N, 3): rows 3v..3v+2 of the layer applied to hidden[:, n], i.e. the diagonal of the full
    (B, N, V, 3) output at O(N*H*3) cost instead of O(N*H*3V).
    """
    matrix, scale, bias = linear_parts(layer)
    vertex_count = matrix.shape[0] // 3
    if vertex_ids is None and hidden.shape[1] != vertex_count:
        raise ValueError(f"without vertex_ids there must be one point per vertex: got {hidden.shape[1]} points "
                         f"for {vertex_count} vertices")

    def per_vertex(values: Tensor) -> Tensor:  # (3V, ...) -> (N, 3, ...): the rows of each point's vertex
        values = values.view(vertex_count, 3, *values.shape[1:])
        return values if vertex_ids is None else values[vertex_ids]

    outputs = torch.einsum("bnh,nkh->bnk", hidden, per_vertex(matrix))
    if scale is not None:
        outputs = outputs * per_vertex(scale)
    return outputs + per_vertex(bias)


def all_vertex_outputs(layer: nn.Module, hidden: Tensor) -> Tensor:
    """The naive full output: hidden (B, P, H) -> (B, P, V, 3), every vertex's block at every point."""
    matrix, scale, bias = linear_parts(layer)
    outputs = nn.functional.linear(hidden, matrix)  # (B, P, 3V)
    if scale is not None:
        outputs = outputs * scale
    return (outputs + bias).view(*hidden.shape[:2], -1, 3)


def diagonal_of_all_offsets(all_offsets: Tensor, vertex_ids: Tensor | None = None) -> Tensor:
    """Picks each point's own vertex out of the full output: (B, N, V, 3) -> (B, N, 3).

    Point n belongs to vertex vertex_ids[n] (vertex n when None). The reference for `own_vertex_outputs`.
    """
    point_count = all_offsets.shape[1]
    if vertex_ids is None:
        vertex_ids = torch.arange(point_count, device=all_offsets.device)
    return all_offsets[:, torch.arange(point_count, device=all_offsets.device), vertex_ids]


def feature_batch_size(features: object) -> int:
    """The batch size B of an encoder output: the leading size of its first tensor (tensor, list, tuple, dict)."""
    if isinstance(features, Tensor):
        return features.shape[0]
    if isinstance(features, dict):
        features = list(features.values())
    if isinstance(features, (list, tuple)) and features:
        return feature_batch_size(features[0])
    raise TypeError(f"cannot find the batch size of features of type {type(features).__name__}")


class LVDNetwork(nn.Module):
    """An encoder plus a point-wise head that predicts, at a point, every vertex's offset to it.

    Subclasses set `vertex_count`, implement `encode`, `config`, and either the two hooks `point_hidden` /
    `offset_layer` (a linear last layer) or both predictions directly.
    """

    vertex_count: int
    registered_name: str  # set by @register_network

    def encode(self, inputs: Tensor) -> object:
        """Inputs (B, ...) -> features, opaque to callers, batched along their first dimension."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able constructor keyword arguments: type(self)(**self.config()) rebuilds this network."""
        raise NotImplementedError

    def batch_size(self, features: object) -> int:
        """The batch size B of `features` (override for features without a tensor leaf)."""
        return feature_batch_size(features)

    def point_hidden(self, features: object, points: Tensor) -> Tensor:
        """The last layer's input at each point: points (B, N, 3) -> (B, N, H)."""
        raise NotImplementedError

    def offset_layer(self) -> nn.Module:
        """The last layer: 3V outputs, rows 3v..3v+2 belong to vertex v (weight (3V, H[, 1]), bias (3V,))."""
        raise NotImplementedError

    def predict_own_offsets(self, features: object, points: Tensor, vertex_ids: Tensor | None = None) -> Tensor:
        """Point n's offset for its own vertex: points (B, N, 3) -> (B, N, 3).

        Point n belongs to vertex vertex_ids[n]; all V vertices in order when vertex_ids is None (N = V).
        Uses only that vertex's rows of the last layer, never the full V x 3 output.
        """
        return own_vertex_outputs(self.offset_layer(), self.point_hidden(features, points), vertex_ids)

    def predict_all_offsets(self, features: object, points: Tensor) -> Tensor:
        """Every vertex's offset at every point: points (B, P, 3) -> (B, P, V, 3) (the naive full head)."""
        return all_vertex_outputs(self.offset_layer(), self.point_hidden(features, points))
