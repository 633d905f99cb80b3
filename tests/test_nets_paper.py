"""The paper networks: released key layout, weight norm, query conventions (checked against hand-written
bilinear / trilinear sampling), and the own-offset head against the full output's diagonal."""

import math
from pathlib import Path

import pytest
import torch

from lvd_core.nets.base import diagonal_of_all_offsets
from lvd_core.nets.paper import (MANO_BOX_HALF_SIZE, PAPER_NETWORKS, PaperImageLVD, PaperScanLVD,
                                 WeightNormedPointLayer, paper_layout_from_state_dict, paper_network)

STATE_DICT_LIST = Path("/work/shared/docs/lvd-paper-state-dicts.txt")
if not STATE_DICT_LIST.is_file():
    STATE_DICT_LIST = Path(__file__).resolve().parents[2] / "shared" / "docs" / "lvd-paper-state-dicts.txt"

# Same structure as the paper (4 stacks, depth 2; 7 conv levels) at toy widths.
TINY_IMAGE = dict(in_channels=3, vertex_count=40, stacks=4, depth=2, width=32, head_width=16, norm_groups=4)
TINY_SCAN = dict(vertex_count=30, in_channels=7, level_channels=(4, 4, 4, 4, 4, 4, 4), head_widths=(16, 24, 24))
TINY_IMAGE_SIZE = 32  # maps of 16 x 16
TINY_VOLUME_SIZE = 128  # 7 levels need 2**7; small channels keep it fast


def read_released_layouts() -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """The listed (key, shape, dtype) rows of each released network, in file order."""
    layouts: dict[str, list] = {}
    for line in STATE_DICT_LIST.read_text().splitlines():
        if line.startswith("###"):
            rows = layouts.setdefault(line.split()[1].rstrip(":"), [])
        elif line.strip():
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(int(size) for size in shape.strip("()").split(",") if size.strip()), dtype))
    return layouts


def randomised(network: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict in the network's layout with fresh random values (a stand-in for a released file)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) * 0.3 for key, value in network.state_dict().items()}


def captured_head_input(network: torch.nn.Module, first_layer: torch.nn.Module, features, points) -> torch.Tensor:
    """The point feature vector (B, N, F) entering the head's first layer."""
    captured = []
    handle = first_layer.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    with torch.no_grad():
        network.predict_own_offsets(features, points, torch.zeros(points.shape[1], dtype=torch.long))
    handle.remove()
    return captured[0]


def manual_bilinear(feature_map: torch.Tensor, row: float, column: float) -> torch.Tensor:
    """feature_map (C, H, W) at a fractional (row, column): the 4-pixel weighted mean; zero outside."""
    top, left = math.floor(row), math.floor(column)
    down, right = row - top, column - left
    value = torch.zeros(feature_map.shape[0], dtype=torch.float64)
    for r, weight_r in ((top, 1 - down), (top + 1, down)):
        for c, weight_c in ((left, 1 - right), (left + 1, right)):
            if weight_r * weight_c > 0 and 0 <= r < feature_map.shape[1] and 0 <= c < feature_map.shape[2]:
                value += weight_r * weight_c * feature_map[:, r, c].double()
    return value


def manual_trilinear(volume: torch.Tensor, index: tuple[float, float, float]) -> torch.Tensor:
    """volume (C, D0, D1, D2) at fractional indices along its three axes; zero outside (8-corner weights)."""
    value = torch.zeros(volume.shape[0], dtype=torch.float64)
    base = [math.floor(i) for i in index]
    for corner in range(8):
        offsets = [(corner >> axis) & 1 for axis in range(3)]
        cell = [b + o for b, o in zip(base, offsets)]
        weight = math.prod(1 - abs(i - c) for i, c in zip(index, cell))
        if weight > 0 and all(0 <= c < size for c, size in zip(cell, volume.shape[1:])):
            value += weight * volume[(slice(None), *cell)].double()
    return value


@pytest.fixture(scope="module")
def tiny_image():
    torch.manual_seed(0)
    network = PaperImageLVD(**TINY_IMAGE).eval()
    network.load_state_dict(randomised(network), strict=True)
    return network


@pytest.fixture(scope="module")
def tiny_scan():
    torch.manual_seed(0)
    network = PaperScanLVD(**TINY_SCAN).eval()
    network.load_state_dict(randomised(network), strict=True)
    return network


@pytest.mark.skipif(not STATE_DICT_LIST.is_file(), reason="lvd-paper-state-dicts.txt not found")
@pytest.mark.parametrize("name", list(PAPER_NETWORKS))
def test_default_sizes_give_the_released_keys_shapes_and_order(name):
    with torch.device("meta"):  # no memory, no init time, even for the 149 M parameter voxel net
        network = paper_network(name)
    rows = [(key, tuple(value.shape), str(value.dtype)) for key, value in network.state_dict().items()]
    assert rows == read_released_layouts()[name]
    inferred_name, _, _ = paper_layout_from_state_dict(network.state_dict())
    assert inferred_name == name


def test_tiny_variants_have_the_paper_keys():
    with torch.device("meta"):
        assert PaperImageLVD(**TINY_IMAGE).state_dict().keys() == paper_network("LVD_images_SMPL").state_dict().keys()
        assert PaperScanLVD(**dict(TINY_SCAN, head_widths=(16, 24, 24, 24, 24))).state_dict().keys() \
            == paper_network("LVD_voxels_SMPL").state_dict().keys()


def test_image_block_norm_is_shared_between_bn4_and_downsample(tiny_image):
    block = tiny_image.image_filter.conv2
    assert block.bn4 is block.downsample[0]
    keys = tiny_image.state_dict().keys()
    assert "image_filter.conv2.bn4.weight" in keys and "image_filter.conv2.downsample.0.weight" in keys


def test_weight_norm_matches_torch_parametrization_loading_the_old_keys():
    layer = WeightNormedPointLayer(5, 7)
    layer.load_state_dict(randomised(layer), strict=True)
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(5, 7, 1))
    reference.load_state_dict(layer.state_dict(), strict=True)  # torch's compatibility hook for weight_g/_v
    points = torch.randn(2, 11, 5)
    expected = reference(points.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(layer(points), expected, atol=1e-6, rtol=1e-5)


def test_released_layout_loads_strictly_and_predicts_the_same(tiny_image, tiny_scan):
    for network, kwargs, inputs in ((tiny_image, TINY_IMAGE, torch.randn(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)),
                                    (tiny_scan, TINY_SCAN, torch.randn(1, 7, *[TINY_VOLUME_SIZE] * 3))):
        copy = type(network)(**kwargs).eval()
        copy.load_state_dict(network.state_dict(), strict=True)
        points = torch.rand(1, network.vertex_count, 3) - 0.5
        with torch.no_grad():
            torch.testing.assert_close(copy.predict_own_offsets(copy.encode(inputs), points),
                                       network.predict_own_offsets(network.encode(inputs), points))


def test_image_query_is_bilinear_on_every_stack_at_the_authors_uv(tiny_image):
    image = torch.randn(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    points = torch.tensor([[[-102.4, 102.4, 5.0], [102.4, -102.4, -3.0], [0.0, 0.0, 0.0], [31.7, -58.2, 12.0],
                            [-77.1, 12.9, 40.0]]])
    with torch.no_grad():
        maps = tiny_image.encode(image)
    head_input = captured_head_input(tiny_image, tiny_image.fc1, maps, points)[0].double()
    height, width = maps[0].shape[-2:]
    for n, (x, y, _) in enumerate(points[0].tolist()):
        u, v = (x / 0.2 + 512) / 1024, (y / 0.2 + 512) / 1024
        row, column = (1 - v) * (height - 1), u * (width - 1)  # v flipped: row 0 is the top; align_corners
        expected = [points[0, n].double() / 50] + [manual_bilinear(stack_map[0], row, column) for stack_map in maps]
        torch.testing.assert_close(head_input[n], torch.cat(expected), atol=1e-5, rtol=1e-5)
    # The image corners: top-left and bottom-right pixels exactly.
    torch.testing.assert_close(head_input[0, 3:3 + 32], maps[0][0, :, 0, 0].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(head_input[1, 3:3 + 32], maps[0][0, :, -1, -1].double(), atol=1e-6, rtol=0)


def test_scan_query_swaps_x_and_z_and_reads_half_a_voxel_off(tiny_scan):
    """A volume built the authors' way, V[ix, iy, iz] = f(corner of cell (ix, iy, iz)), for a linear f: the
    net reads f(p_z - s/2, p_y - s/2, p_x - s/2) (s the voxel size), i.e. x/z swapped and half a voxel off."""
    box, size = 0.8, TINY_VOLUME_SIZE
    step = 2 * box / size
    corners = -box + torch.arange(size) * step  # sample i sits at b_min + i * s
    ix, iy, iz = torch.meshgrid(corners, corners, corners, indexing="ij")
    linear = lambda x, y, z: x + 2 * y + 3 * z  # noqa: E731
    volume = torch.zeros(1, 7, size, size, size)
    volume[0, 0] = linear(ix, iy, iz)
    points = torch.tensor([[[0.1, -0.2, 0.3], [-0.5, 0.4, 0.05], [0.33, 0.61, -0.7]]])
    with torch.no_grad():
        features = tiny_scan.encode(volume)
    head_input = captured_head_input(tiny_scan, tiny_scan.fc_0, features, points)[0]
    torch.testing.assert_close(head_input[:, :3], points[0] / box)
    px, py, pz = points[0].unbind(-1)
    expected = linear(pz - step / 2, py - step / 2, px - step / 2)
    torch.testing.assert_close(head_input[:, 3], expected, atol=1e-5, rtol=1e-5)


def test_scan_query_is_trilinear_on_every_level(tiny_scan):
    volume = torch.randn(1, 7, *[TINY_VOLUME_SIZE] * 3)
    points = torch.tensor([[[0.1, -0.2, 0.3], [-0.79, 0.4, 0.05], [0.33, 0.61, -0.7], [0.0, 0.0, 0.0]]])
    with torch.no_grad():
        levels = tiny_scan.encode(volume)
    head_input = captured_head_input(tiny_scan, tiny_scan.fc_0, levels, points)[0].double()
    box = 0.8
    for n, (x, y, z) in enumerate(points[0].tolist()):
        expected = [points[0, n].double() / box]
        for level in levels:
            cells = level.shape[-1]
            # grid_sample, align_corners=False: axis index = (p + box) / voxel - 1/2; volume axes are (z, y, x).
            index = tuple((coordinate + box) / (2 * box / cells) - 0.5 for coordinate in (z, y, x))
            expected.append(manual_trilinear(level[0], index))
        torch.testing.assert_close(head_input[n], torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_scan_box_follows_the_body_model():
    hand = PaperScanLVD(**dict(TINY_SCAN, vertex_count=778, box_half_size=MANO_BOX_HALF_SIZE))
    assert (hand.box_min, hand.box_max) == (-1.2, 1.2)
    assert PAPER_NETWORKS["LVD_voxels_MANO"][1]["box_half_size"] == 1.2


@pytest.mark.parametrize("network_name", ["tiny_image", "tiny_scan"])
def test_own_offset_head_equals_the_full_output_diagonal(network_name, request):
    network = request.getfixturevalue(network_name)
    inputs = (torch.randn(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) if network_name == "tiny_image"
              else torch.randn(2, 7, *[TINY_VOLUME_SIZE] * 3))
    scale = 60.0 if network_name == "tiny_image" else 0.7
    vertex_count = network.vertex_count
    with torch.no_grad():
        features = network.encode(inputs)
        points = (torch.rand(2, vertex_count, 3) * 2 - 1) * scale
        full = network.predict_all_offsets(features, points)
        assert full.shape == (2, vertex_count, vertex_count, 3)
        torch.testing.assert_close(network.predict_own_offsets(features, points), diagonal_of_all_offsets(full),
                                   atol=1e-5, rtol=1e-5)
        vertex_ids = torch.tensor([3, 0, 3, vertex_count - 1, 7])
        subset = points[:, :5]
        torch.testing.assert_close(network.predict_own_offsets(features, subset, vertex_ids),
                                   diagonal_of_all_offsets(network.predict_all_offsets(features, subset), vertex_ids),
                                   atol=1e-5, rtol=1e-5)


def test_own_offsets_need_one_point_per_vertex_without_ids(tiny_image):
    features = tiny_image.encode(torch.randn(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    with pytest.raises(ValueError, match="one point per vertex"):
        tiny_image.predict_own_offsets(features, torch.zeros(1, 3, 3))
