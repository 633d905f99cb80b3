"""The compact scan network: own-vertex head equals the full output's diagonal, descent equals the naive
descent, checkpoints round-trip, the grid query follows the grids' cell-corner convention."""

import numpy as np
import torch
from torch.nn import functional as F

from lvd_core.checkpoints import load_checkpoint, save_checkpoint
from lvd_core.descent import descend, descend_naive
from lvd_core.inputs.grids import COMPACT_BODY, grid_axes
from lvd_core.nets.base import diagonal_of_all_offsets
from lvd_core.nets.compact import CompactScanLVD, grid_coordinates

SMALL = dict(vertex_count=40, channels=(4, 4, 8, 8), global_width=8, embed_width=8, hidden=16)


def _network(seed=0):
    torch.manual_seed(seed)
    template = (torch.rand(SMALL["vertex_count"], 3) - 0.5).tolist()
    return CompactScanLVD(template=template, **SMALL).eval()


def test_own_offsets_equal_the_full_outputs_diagonal():
    net = _network()
    grids = torch.rand(2, 4, 32, 32, 32)
    with torch.no_grad():
        features = net.encode(grids)
        points = torch.rand(2, 40, 3) - 0.5
        own = net.predict_own_offsets(features, points)
        full = net.predict_all_offsets(features, points)
    assert full.shape == (2, 40, 40, 3)
    assert torch.allclose(own, diagonal_of_all_offsets(full), atol=1e-5)


def test_per_item_vertex_ids_as_in_training():
    net = _network()
    with torch.no_grad():
        features = net.encode(torch.rand(2, 4, 32, 32, 32))
        points = torch.rand(2, 10, 3) - 0.5
        ids = torch.randint(0, 40, (2, 10))
        both = net.predict_own_offsets(features, points, ids)
        first = net.predict_own_offsets({"maps": [m[:1] for m in features["maps"]], "global": features["global"][:1]},
                                        points[:1], ids[0])
    assert torch.allclose(both[:1], first, atol=1e-6)


def test_descent_equals_naive_descent():
    net = _network()
    with torch.no_grad():
        features = net.encode(torch.rand(1, 4, 32, 32, 32))
        start = net.template[None]
        fast = descend(net, features, start, iterations=4)
        naive = descend_naive(net, features, start, iterations=4)
    assert torch.allclose(fast.vertices, naive.vertices, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    net = _network()
    save_checkpoint(tmp_path / "net.pt", net, metadata={"vertex_ids": list(range(40))})
    loaded = load_checkpoint(tmp_path / "net.pt", device="cpu")
    assert isinstance(loaded, CompactScanLVD) and loaded.checkpoint_metadata["vertex_ids"] == list(range(40))
    grids = torch.rand(1, 4, 32, 32, 32)
    with torch.no_grad():
        a = net.predict_own_offsets(net.encode(grids), net.template[None])
        b = loaded.predict_own_offsets(loaded.encode(grids), loaded.template[None])
    assert torch.equal(a, b)


def test_grid_query_hits_the_grid_samples():
    """A volume holding its own sample positions, read at those positions, gives them back exactly."""
    axes = grid_axes(COMPACT_BODY.box_min, COMPACT_BODY.box_max, 32)  # (3, R) sample positions per axis
    xs, ys, zs = np.meshgrid(*axes, indexing="ij")
    volume = torch.from_numpy(np.stack([xs, ys, zs]).astype(np.float32))[None]  # V[c, ix, iy, iz]
    picks = torch.tensor([[0, 0, 0], [31, 5, 17], [10, 31, 2]])
    points = torch.from_numpy(np.stack([axes[a][picks[:, a]] for a in range(3)], axis=1).astype(np.float32))[None]
    coords = grid_coordinates(points, COMPACT_BODY.box_max, 32)
    sampled = F.grid_sample(volume, coords, align_corners=True)[0, :, :, 0, 0].T
    assert torch.allclose(sampled, points[0], atol=1e-5)
