"""Vertex descent: the update rule, start broadcasting, early stop, trajectories, subsets, batching, and the
own-offset descent against the authors' full-output descent; device choice."""

import pytest
import torch
from torch import Tensor, nn

from lvd_core.descent import descend, descend_naive
from lvd_core.devices import pick_device
from lvd_core.nets.base import LVDNetwork
from lvd_core.nets.paper import PaperImageLVD, PaperScanLVD

TINY_IMAGE = dict(in_channels=4, vertex_count=25, stacks=2, depth=2, width=32, head_width=16, norm_groups=4)
TINY_SCAN = dict(vertex_count=20, level_channels=(4, 4, 4, 4), head_widths=(16, 16))  # 16^3 volumes


class ContractingNetwork(LVDNetwork):
    """f_v(x) = rate * (x - target_v), through a real linear last layer: descent gives
    x_k - target = (1 - rate)^k (x_0 - target)."""

    def __init__(self, targets: Tensor, rate: float):
        super().__init__()
        self.vertex_count = targets.shape[0]
        self.layer = nn.Linear(4, 3 * self.vertex_count)
        with torch.no_grad():
            self.layer.weight.copy_(torch.cat([rate * torch.eye(3).repeat(self.vertex_count, 1),
                                               -rate * targets.reshape(-1, 1)], dim=1))
            self.layer.bias.zero_()

    def encode(self, inputs: Tensor) -> Tensor:
        return inputs  # (B, 1): only the batch size matters

    def point_hidden(self, features: Tensor, points: Tensor) -> Tensor:
        return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (B, N, 4) = [x, 1]

    def offset_layer(self) -> nn.Module:
        return self.layer


@pytest.fixture(scope="module")
def targets() -> Tensor:
    return torch.randn(6, 3, generator=torch.Generator().manual_seed(1))


def test_update_rule_from_one_starting_point(targets):
    network = ContractingNetwork(targets, rate=0.5)
    result = descend(network, network.encode(torch.zeros(2, 1)), torch.tensor([1.0, 2.0, 3.0]), iterations=4)
    expected = targets + 0.5 ** 4 * (torch.tensor([1.0, 2.0, 3.0]) - targets)
    assert result.vertices.shape == (2, 6, 3) and result.iterations_run == 4
    torch.testing.assert_close(result.vertices, expected.expand(2, 6, 3))
    last_step = 0.5 ** 4 * torch.linalg.vector_norm(torch.tensor([1.0, 2.0, 3.0]) - targets, dim=-1).max()
    assert result.largest_step == pytest.approx(float(last_step), rel=1e-5)


def test_start_shapes_broadcast(targets):
    network = ContractingNetwork(targets, rate=0.5)
    features = network.encode(torch.zeros(2, 1))
    per_vertex = torch.randn(2, 6, 3)
    per_input = torch.randn(2, 1, 3)
    full = descend(network, features, per_vertex, iterations=2)
    torch.testing.assert_close(full.vertices, targets + 0.25 * (per_vertex - targets))
    one = descend(network, features, per_input, iterations=2)
    torch.testing.assert_close(one.vertices, targets + 0.25 * (per_input - targets))
    assert per_vertex.shape == (2, 6, 3)  # the start is not modified in place
    for bad in (torch.zeros(2), torch.zeros(3, 6, 3), torch.zeros(2, 5, 3), torch.zeros(1, 2, 6, 3)):
        with pytest.raises(ValueError, match="start"):
            descend(network, features, bad)


def test_tolerance_stops_early_and_trajectory_has_every_step(targets):
    network = ContractingNetwork(targets, rate=0.5)
    start = torch.zeros(3)
    result = descend(network, network.encode(torch.zeros(1, 1)), start, iterations=50, tolerance=1e-3,
                     return_trajectory=True)
    largest_distance = float(torch.linalg.vector_norm(targets, dim=-1).max())
    # step k moves by 0.5^k * distance: the first k with that under 1e-3
    expected_iterations = next(k for k in range(1, 50) if 0.5 ** k * largest_distance < 1e-3)
    assert result.iterations_run == expected_iterations < 50
    assert result.largest_step < 1e-3
    assert result.trajectory.shape == (expected_iterations + 1, 1, 6, 3)
    torch.testing.assert_close(result.trajectory[0], torch.zeros(1, 6, 3))
    torch.testing.assert_close(result.trajectory[-1], result.vertices)
    assert descend(network, network.encode(torch.zeros(1, 1)), start, iterations=3).trajectory is None


@pytest.fixture(scope="module")
def tiny_networks():
    torch.manual_seed(0)
    image = PaperImageLVD(**TINY_IMAGE).eval()
    scan = PaperScanLVD(**TINY_SCAN).eval()
    with torch.no_grad():
        for network in (image, scan):  # larger head weights: offsets that actually move the vertices
            network.offset_layer().weight_g.mul_(20)
    return {"image": (image, torch.randn(2, 4, 32, 32), 40.0), "scan": (scan, torch.randn(2, 7, 16, 16, 16), 0.5)}


@pytest.mark.parametrize("kind", ["image", "scan"])
def test_own_offset_descent_matches_the_full_output_descent(tiny_networks, kind):
    network, inputs, scale = tiny_networks[kind]
    with torch.no_grad():
        features = network.encode(inputs)
    start = torch.randn(2, network.vertex_count, 3) * scale
    fast = descend(network, features, start, iterations=5, return_trajectory=True)
    naive = descend_naive(network, features, start, iterations=5, return_trajectory=True)
    assert (fast.trajectory[-1] - fast.trajectory[0]).abs().max() > 1e-3 * scale  # the vertices did move
    torch.testing.assert_close(fast.trajectory, naive.trajectory, atol=1e-5, rtol=1e-5)


def test_vertex_subset_and_batch_members_descend_independently(tiny_networks):
    network, inputs, scale = tiny_networks["image"]
    with torch.no_grad():
        features = network.encode(inputs)
        first_only = network.encode(inputs[:1])
    start = torch.randn(2, network.vertex_count, 3) * scale
    whole = descend(network, features, start, iterations=3)
    vertex_ids = torch.tensor([4, 0, 17])
    subset = descend(network, features, start[:, vertex_ids], iterations=3, vertex_ids=vertex_ids)
    torch.testing.assert_close(subset.vertices, whole.vertices[:, vertex_ids], atol=1e-5, rtol=1e-5)
    alone = descend(network, first_only, start[:1], iterations=3)
    torch.testing.assert_close(alone.vertices, whole.vertices[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_descent_on_cuda_matches_cpu(tiny_networks):
    network, inputs, scale = tiny_networks["scan"]
    start = torch.randn(2, network.vertex_count, 3) * scale
    with torch.no_grad():
        on_cpu = descend(network, network.encode(inputs), start, iterations=5)
        gpu_network = PaperScanLVD(**TINY_SCAN).cuda().eval()
        gpu_network.load_state_dict(network.state_dict())
        on_gpu = descend(gpu_network, gpu_network.encode(inputs.cuda()), start.cuda(), iterations=5)
    assert on_gpu.vertices.is_cuda
    torch.testing.assert_close(on_gpu.vertices.cpu(), on_cpu.vertices, atol=1e-4, rtol=1e-4)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected 'auto'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA was requested"):
            pick_device("cuda")
