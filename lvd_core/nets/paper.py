"""The authors' four released networks, rebuilt so their files load with strict=True, key for key.

- `PaperImageLVD`: PIFu stacked hourglass (4 stacks, depth 2, GroupNorm(32)) on a 256 x 256 image, four
  256 x 128 x 128 maps, and a weight-normed 1x1 Conv1d head 1027 -> 512 -> 512 -> 3V.
- `PaperScanLVD`: 14 weight-normed Conv3d over a 7 x 128^3 distance volume, 8 feature levels
  (128^3 .. 1^3), and a weight-normed head 714 -> 2048 -> 4096 x 4 -> 3V.

Default arguments give the exact paper shapes; the width/depth arguments build small look-alikes for tests.
The query conventions (and their quirks) are the authors', kept on purpose: see `image_grid` and
`scan_grid`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LVDNetwork, register_network

SMPL_VERTEX_COUNT = 6890
MANO_VERTEX_COUNT = 778

# Image frame: a 1024-pixel canvas at 0.2 units per pixel, so the image spans [-102.4, 102.4] units.
IMAGE_UNITS_PER_PIXEL = 0.2
IMAGE_CANVAS_PIXELS = 1024
IMAGE_POINT_SCALE = 50.0  # the head sees p / 50
# Voxel boxes: the cube [-h, h]^3 the 128^3 volume covers.
SMPL_BOX_HALF_SIZE = 0.8
MANO_BOX_HALF_SIZE = 1.2


class WeightNormedConv(nn.Module):
    """A convolution whose weight is g * v / ||v|| (norm over all but the output dimension).

    Parameters are stored as `bias`, `weight_g`, `weight_v`, the keys of the old torch.nn.utils.weight_norm
    (deprecated) the released files were written with; parametrizations.weight_norm would load them but save
    different keys.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, spatial_dims: int = 1,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1](in_channels, out_channels, kernel_size)
        self.convolve = (F.conv1d, F.conv2d, F.conv3d)[spatial_dims - 1]
        self.stride, self.padding = stride, padding
        self.bias = plain.bias
        self.weight_g = nn.Parameter(weight_norms(plain.weight.detach()))
        self.weight_v = plain.weight

    def scale(self) -> Tensor:
        """g / ||v|| per output channel, shaped like weight_g: (out, 1, ..., 1)."""
        return self.weight_g / weight_norms(self.weight_v)

    @property
    def weight(self) -> Tensor:
        """The effective weight (out, in, *kernel)."""
        return self.weight_v * self.scale()

    def forward(self, x: Tensor) -> Tensor:
        return self.convolve(x, self.weight, self.bias, self.stride, self.padding)


class WeightNormedPointLayer(WeightNormedConv):
    """The paper's weight-normed 1x1 Conv1d (in -> out), applied point-wise: (B, N, in) -> (B, N, out).

    Scales the outputs instead of the weight, so the effective weight is never materialised.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_v[..., 0]) * self.scale().flatten() + self.bias


def weight_norms(weight: Tensor) -> Tensor:
    """||w|| per output channel: (out, *rest) -> (out, 1, ..., 1)."""
    return torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True)


def point_mlp(layers: list[nn.Module], x: Tensor) -> Tensor:
    """ReLU after every layer: x (B, N, C) -> (B, N, H)."""
    for layer in layers:
        x = F.relu(layer(x))
    return x


# ---------------------------------------------------------------------------------------------- image network


class ConvBlock(nn.Module):
    """PIFu's residual block: three pre-activated 3x3 convs (out/2, out/4, out/4) concatenated, plus a skip.

    `bn4` is the same module as `downsample.0` (both keys are in the released files); the skip is
    GroupNorm -> ReLU -> 1x1 conv only when the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, half, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(half, quarter, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, padding=1, bias=False)
        self.bn1 = nn.GroupNorm(groups, in_channels)
        self.bn2 = nn.GroupNorm(groups, half)
        self.bn3 = nn.GroupNorm(groups, quarter)
        self.bn4 = nn.GroupNorm(groups, in_channels)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(self.bn4, nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], dim=1) + skip


class Hourglass(nn.Module):
    """A depth-d hourglass: at each level an upper ConvBlock at full size plus a lower branch at half size.

    Modules are named b1_<level>, b2_<level>, (b2_plus_1 at the bottom), b3_<level>, created top level first
    as in the released files.
    """

    def __init__(self, depth: int, channels: int, groups: int):
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(channels, channels, groups))
            self.add_module(f"b2_{level}", ConvBlock(channels, channels, groups))
        self.add_module("b2_plus_1", ConvBlock(channels, channels, groups))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(channels, channels, groups))

    def forward(self, x: Tensor) -> Tensor:
        return self.level_forward(self.depth, x)

    def level_forward(self, level: int, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); H and W must be divisible by 2**level."""
        upper = self.get_submodule(f"b1_{level}")(x)
        lower = self.get_submodule(f"b2_{level}")(F.avg_pool2d(x, 2))
        lower = self.level_forward(level - 1, lower) if level > 1 else self.b2_plus_1(lower)
        lower = self.get_submodule(f"b3_{level}")(lower)
        return upper + F.interpolate(lower, scale_factor=2, mode="bicubic", align_corners=True)


class StackedHourglass(nn.Module):
    """PIFu's HGFilter with 'no_down': a stride-2 7x7 stem and n hourglass stacks, each emitting a map.

    Image (B, in, H, W) -> `stacks` maps (B, width, H/2, W/2). Each stack's output is fed back into the next
    (previous + bl(features) + al(output)), except the last stack, which has no bl/al.
    """

    def __init__(self, in_channels: int, stacks: int, depth: int, width: int, groups: int):
        super().__init__()
        stem, middle = width // 4, width // 2  # 64, 128 for the paper's 256
        self.stacks = stacks
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3)
        self.bn1 = nn.GroupNorm(groups, stem)
        self.conv2 = ConvBlock(stem, middle, groups)
        self.conv3 = ConvBlock(middle, middle, groups)
        self.conv4 = ConvBlock(middle, width, groups)
        for stack in range(stacks):
            self.add_module(f"m{stack}", Hourglass(depth, width, groups))
            self.add_module(f"top_m_{stack}", ConvBlock(width, width, groups))
            self.add_module(f"conv_last{stack}", nn.Conv2d(width, width, 1))
            self.add_module(f"bn_end{stack}", nn.GroupNorm(groups, width))
            self.add_module(f"l{stack}", nn.Conv2d(width, width, 1))
            if stack < stacks - 1:
                self.add_module(f"bl{stack}", nn.Conv2d(width, width, 1))
                self.add_module(f"al{stack}", nn.Conv2d(width, width, 1))

    def stack_module(self, name: str, stack: int) -> nn.Module:
        """The module `name` of stack `stack` (names carry the stack index: m0, top_m_0, l0, ...)."""
        return self.get_submodule(f"{name}{stack}")

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = F.relu(self.bn1(self.conv1(image)))
        previous = self.conv4(self.conv3(self.conv2(x)))
        maps = []
        for stack in range(self.stacks):
            x = self.stack_module("top_m_", stack)(self.stack_module("m", stack)(previous))
            x = F.relu(self.stack_module("bn_end", stack)(self.stack_module("conv_last", stack)(x)))
            stack_map = self.stack_module("l", stack)(x)
            maps.append(stack_map)
            if stack < self.stacks - 1:
                previous = previous + self.stack_module("bl", stack)(x) + self.stack_module("al", stack)(stack_map)
        return tuple(maps)


def image_grid(points: Tensor) -> Tensor:
    """Points (B, N, 3) in image units -> grid_sample coordinates (B, N, 1, 2) in [-1, 1].

    The authors' orthographic frame: uv = (p / 0.2 + 512) / 1024, v flipped so row 0 is the top of the image;
    grid = 2 uv - 1 (sampled with align_corners=True). z is not used.
    """
    uv = (points[..., :2] / IMAGE_UNITS_PER_PIXEL + IMAGE_CANVAS_PIXELS / 2) / IMAGE_CANVAS_PIXELS
    u, v = uv.unbind(-1)
    return torch.stack([u, 1 - v], dim=-1).unsqueeze(2) * 2 - 1


def sample_maps(maps: tuple[Tensor, ...], grid: Tensor, align_corners: bool) -> list[Tensor]:
    """Bilinear (2D) / trilinear (3D) samples of each map at the grid: -> list of (B, N, C_map)."""
    sampled = [F.grid_sample(feature_map, grid, align_corners=align_corners) for feature_map in maps]
    return [samples.flatten(2).transpose(1, 2) for samples in sampled]  # (B, C, N, 1[, 1]) -> (B, N, C)


@register_network("PaperImageLVD")
class PaperImageLVD(LVDNetwork):
    """LVD_images_SMPL (in_channels=3) / LVD_images_wmask_SMPL (in_channels=4).

    encode: image (B, in_channels, 256, 256), ImageNet-normalised -> `stacks` maps (B, width, 128, 128).
    Point feature: [p / 50, stack 0 .. stack n-1 samples] = 3 + stacks * width (1027).
    """

    def __init__(self, in_channels: int = 3, vertex_count: int = SMPL_VERTEX_COUNT, stacks: int = 4,
                 depth: int = 2, width: int = 256, head_width: int = 512, norm_groups: int = 32):
        super().__init__()
        self.vertex_count = vertex_count
        self.settings = dict(in_channels=in_channels, vertex_count=vertex_count, stacks=stacks, depth=depth,
                             width=width, head_width=head_width, norm_groups=norm_groups)
        self.image_filter = StackedHourglass(in_channels, stacks, depth, width, norm_groups)
        self.fc1 = WeightNormedPointLayer(3 + stacks * width, head_width)
        self.fc2 = WeightNormedPointLayer(head_width, head_width)
        self.fc3 = WeightNormedPointLayer(head_width, 3 * vertex_count)

    def config(self) -> dict:
        return dict(self.settings)

    def encode(self, inputs: Tensor) -> tuple[Tensor, ...]:
        return self.image_filter(inputs)

    def point_hidden(self, features: tuple[Tensor, ...], points: Tensor) -> Tensor:
        samples = sample_maps(features, image_grid(points), align_corners=True)
        point_features = torch.cat([points / IMAGE_POINT_SCALE, *samples], dim=-1)
        return point_mlp([self.fc1, self.fc2], point_features)

    def offset_layer(self) -> nn.Module:
        return self.fc3


# ---------------------------------------------------------------------------------------------- scan network


def scan_grid(points: Tensor, box_min: float, box_max: float) -> Tensor:
    """Points (B, N, 3) -> normalised points (B, N, 3) in [-1, 1] over the cube [box_min, box_max]^3.

    Passed to grid_sample as they are, with the authors' two quirks (the released weights depend on them):
    - the volume is stored V[ix, iy, iz] but grid_sample reads grid component 0 along the last axis (W), so
      p_x indexes iz and p_z indexes ix: x and z are swapped;
    - the volume's sample i sits at box_min + i * size / res (a cell corner) while grid_sample with
      align_corners=False puts it at the cell centre: features are read half a voxel off.
    """
    return (points - box_min) / (box_max - box_min) * 2 - 1


@register_network("PaperScanLVD")
class PaperScanLVD(LVDNetwork):
    """LVD_voxels_SMPL (vertex_count=6890, box 0.8) / LVD_voxels_MANO (vertex_count=778, box 1.2).

    encode: distance volume (B, in_channels, R, R, R), R = 2 ** len(level_channels) (128) -> feature levels
    [volume, conv level 1 (R/2), ..., conv level L (1)]. Level k: (k > 1: 2x max-pool) conv_k (level 1:
    stride 2), ReLU, conv_k_1, ReLU. Point feature: [p_norm, samples of every level] = 3 + 7 + 32 + 64 + 96
    + 4 x 128 (714); head: fc_0 .. fc_<n-1> with ReLU, then fc_out (3V).
    """

    def __init__(self, vertex_count: int = SMPL_VERTEX_COUNT, box_half_size: float = SMPL_BOX_HALF_SIZE,
                 in_channels: int = 7, level_channels: tuple[int, ...] = (32, 64, 96, 128, 128, 128, 128),
                 head_widths: tuple[int, ...] = (2048, 4096, 4096, 4096, 4096)):
        super().__init__()
        self.vertex_count = vertex_count
        self.box_min, self.box_max = -box_half_size, box_half_size
        self.settings = dict(vertex_count=vertex_count, box_half_size=box_half_size, in_channels=in_channels,
                             level_channels=list(level_channels), head_widths=list(head_widths))
        self.level_count = len(level_channels)
        for level, (level_in, level_out) in enumerate(zip((in_channels, *level_channels), level_channels), 1):
            stride = 2 if level == 1 else 1
            self.add_module(f"conv_{level}", WeightNormedConv(level_in, level_out, 3, 3, stride, padding=1))
            self.add_module(f"conv_{level}_1", WeightNormedConv(level_out, level_out, 3, 3, padding=1))
        widths = (3 + in_channels + sum(level_channels), *head_widths)
        self.hidden_layers = [WeightNormedPointLayer(a, b) for a, b in zip(widths, widths[1:])]
        for index, layer in enumerate(self.hidden_layers):
            self.add_module(f"fc_{index}", layer)
        self.fc_out = WeightNormedPointLayer(widths[-1], 3 * vertex_count)

    def config(self) -> dict:
        return dict(self.settings)

    def encode(self, inputs: Tensor) -> tuple[Tensor, ...]:
        levels = [inputs]
        x = inputs
        for level in range(1, self.level_count + 1):
            if level > 1:
                x = F.max_pool3d(x, 2)
            x = F.relu(self.get_submodule(f"conv_{level}")(x))
            x = F.relu(self.get_submodule(f"conv_{level}_1")(x))
            levels.append(x)
        return tuple(levels)

    def point_hidden(self, features: tuple[Tensor, ...], points: Tensor) -> Tensor:
        normalised = scan_grid(points, self.box_min, self.box_max)
        samples = sample_maps(features, normalised[:, :, None, None, :], align_corners=False)
        return point_mlp(self.hidden_layers, torch.cat([normalised, *samples], dim=-1))

    def offset_layer(self) -> nn.Module:
        return self.fc_out


# ---------------------------------------------------------------------------------------------- released files

PAPER_NETWORKS = {
    "LVD_images_SMPL": (PaperImageLVD, dict(in_channels=3)),
    "LVD_images_wmask_SMPL": (PaperImageLVD, dict(in_channels=4)),
    "LVD_voxels_SMPL": (PaperScanLVD, dict(vertex_count=SMPL_VERTEX_COUNT, box_half_size=SMPL_BOX_HALF_SIZE)),
    "LVD_voxels_MANO": (PaperScanLVD, dict(vertex_count=MANO_VERTEX_COUNT, box_half_size=MANO_BOX_HALF_SIZE)),
}


def paper_network(name: str) -> LVDNetwork:
    """The released network `name` (a PAPER_NETWORKS key) at the paper's sizes, randomly initialised."""
    network_class, kwargs = PAPER_NETWORKS[name]
    return network_class(**kwargs)


def paper_layout_from_state_dict(state_dict: dict[str, Tensor]) -> tuple[str, type, dict]:
    """Which released network a state_dict is, and the constructor kwargs its shapes imply.

    Returns (PAPER_NETWORKS name, class, kwargs). Sizes are read from the shapes, so small look-alikes in
    the released layout are recognised too; GroupNorm groups are not in the file and are taken as
    min(32, width / 8) (32 for the paper). Raises ValueError when the layout is neither.
    """
    if "image_filter.conv1.weight" in state_dict:
        return image_layout(state_dict)
    if "conv_1.weight_v" in state_dict:
        return scan_layout(state_dict)
    raise ValueError("neither the image layout (image_filter.conv1.weight) nor the voxel layout (conv_1.weight_v)")


def image_layout(state_dict: dict[str, Tensor]) -> tuple[str, type, dict]:
    """Sizes of an image-layout state_dict (see paper_layout_from_state_dict)."""
    in_channels = state_dict["image_filter.conv1.weight"].shape[1]
    width = state_dict["image_filter.conv_last0.weight"].shape[0]
    kwargs = dict(in_channels=in_channels, vertex_count=state_dict["fc3.bias"].shape[0] // 3,
                  stacks=count_indexed(state_dict, "image_filter.l{}.weight", start=0),
                  depth=count_indexed(state_dict, "image_filter.m0.b1_{}.conv1.weight", start=1),
                  width=width, head_width=state_dict["fc1.bias"].shape[0], norm_groups=min(32, width // 8))
    name = "LVD_images_wmask_SMPL" if in_channels == 4 else "LVD_images_SMPL"
    return name, PaperImageLVD, kwargs


def scan_layout(state_dict: dict[str, Tensor]) -> tuple[str, type, dict]:
    """Sizes of a voxel-layout state_dict (see paper_layout_from_state_dict); the box follows from V."""
    level_count = count_indexed(state_dict, "conv_{}.bias", start=1)
    head_count = count_indexed(state_dict, "fc_{}.bias", start=0)
    vertex_count = state_dict["fc_out.bias"].shape[0] // 3
    names = {SMPL_VERTEX_COUNT: "LVD_voxels_SMPL", MANO_VERTEX_COUNT: "LVD_voxels_MANO"}
    if vertex_count not in names:
        raise ValueError(f"voxel layout with {vertex_count} vertices: expected {SMPL_VERTEX_COUNT} (SMPL) or "
                         f"{MANO_VERTEX_COUNT} (MANO), which fixes the box")
    kwargs = dict(PAPER_NETWORKS[names[vertex_count]][1], in_channels=state_dict["conv_1.weight_v"].shape[1],
                  level_channels=[state_dict[f"conv_{k}.bias"].shape[0] for k in range(1, level_count + 1)],
                  head_widths=[state_dict[f"fc_{k}.bias"].shape[0] for k in range(head_count)])
    return names[vertex_count], PaperScanLVD, kwargs


def count_indexed(state_dict: dict[str, Tensor], pattern: str, start: int) -> int:
    """How many consecutive indices start, start+1, ... have `pattern.format(index)` as a key."""
    index = start
    while pattern.format(index) in state_dict:
        index += 1
    return index - start
