"""Checkpoints: our format round trip and registry, the authors' plain state_dicts (kind inferred from keys
and shapes, strict load), and one-line CheckpointErrors for every broken file."""

import pickle

import pytest
import torch
from torch import Tensor, nn

from lvd_core.checkpoints import (CheckpointError, load_checkpoint, load_paper_checkpoint, register_network,
                                  save_checkpoint)
from lvd_core.nets.base import LVDNetwork
from lvd_core.nets.paper import PAPER_NETWORKS, PaperImageLVD, PaperScanLVD

TINY_IMAGE = dict(vertex_count=12, stacks=2, depth=1, width=32, head_width=8, norm_groups=4)
TINY_SCAN = dict(level_channels=(4, 4, 4), head_widths=(8, 8))  # 8^3 volumes
EPOCH_FILE = "net_epoch_50_id_img_encoder.pth"


@register_network("TestAffineLVD")
class AffineLVD(LVDNetwork):
    """A minimal registered network: offsets are an affine map of the point."""

    def __init__(self, vertex_count: int, note: str = ""):
        super().__init__()
        self.vertex_count, self.note = vertex_count, note
        self.head = nn.Linear(3, 3 * vertex_count)

    def config(self) -> dict:
        return {"vertex_count": self.vertex_count, "note": self.note}

    def encode(self, inputs: Tensor) -> Tensor:
        return inputs

    def point_hidden(self, features: Tensor, points: Tensor) -> Tensor:
        return points

    def offset_layer(self) -> nn.Module:
        return self.head


def released_like(name: str) -> tuple[LVDNetwork, Tensor]:
    """A tiny network in one released layout, with random weights, and an input for it."""
    torch.manual_seed(0)
    network_class, paper_kwargs = PAPER_NETWORKS[name]
    if network_class is PaperImageLVD:
        channels = paper_kwargs["in_channels"]
        return PaperImageLVD(**dict(paper_kwargs, **TINY_IMAGE)).eval(), torch.randn(1, channels, 16, 16)
    return PaperScanLVD(**dict(paper_kwargs, **TINY_SCAN)).eval(), torch.randn(1, 7, 8, 8, 8)


def own_offsets(network: LVDNetwork, inputs: Tensor) -> Tensor:
    points = torch.rand(1, network.vertex_count, 3) - 0.5
    generator_state = torch.random.get_rng_state()
    with torch.no_grad():
        result = network.predict_own_offsets(network.encode(inputs), points)
    torch.random.set_rng_state(generator_state)
    return result


def assert_one_line_error(call, path, *fragments):
    with pytest.raises(CheckpointError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("name", list(PAPER_NETWORKS))
def test_released_files_are_recognised_and_load_strictly(tmp_path, name):
    network, inputs = released_like(name)
    path = tmp_path / EPOCH_FILE
    torch.save(network.state_dict(), path)  # the released files are a plain state_dict
    loaded = load_paper_checkpoint(path, device="cpu")
    assert type(loaded) is type(network) and not loaded.training
    assert loaded.config() == network.config()
    torch.manual_seed(3)
    expected = own_offsets(network, inputs)
    torch.manual_seed(3)
    torch.testing.assert_close(own_offsets(loaded, inputs), expected)
    assert load_paper_checkpoint(path, kind=name, device="cpu").config() == network.config()


def test_scan_box_is_taken_from_the_vertex_count(tmp_path):
    for name, half_size in (("LVD_voxels_SMPL", 0.8), ("LVD_voxels_MANO", 1.2)):
        network, _ = released_like(name)
        torch.save(network.state_dict(), tmp_path / EPOCH_FILE)
        assert load_paper_checkpoint(tmp_path / EPOCH_FILE, device="cpu").box_max == half_size


def test_our_format_round_trip_for_paper_and_registered_networks(tmp_path):
    network, inputs = released_like("LVD_images_wmask_SMPL")
    path = save_checkpoint(tmp_path / "image.pth", network, metadata={"trained_on": "synthetic", "epochs": 3})
    loaded = load_checkpoint(path, device="cpu")
    assert type(loaded) is PaperImageLVD and not loaded.training
    assert loaded.checkpoint_metadata == {"trained_on": "synthetic", "epochs": 3}
    torch.manual_seed(5)
    expected = own_offsets(network, inputs)
    torch.manual_seed(5)
    torch.testing.assert_close(own_offsets(loaded, inputs), expected)

    affine = AffineLVD(vertex_count=4, note="x")
    restored = load_checkpoint(save_checkpoint(tmp_path / "affine.pth", affine), device=torch.device("cpu"))
    assert type(restored) is AffineLVD and restored.note == "x"
    torch.testing.assert_close(restored.head.weight, affine.head.weight)
    assert not list(tmp_path.glob("*.partial"))


def test_save_refuses_unregistered_networks(tmp_path):
    class Unregistered(AffineLVD):
        pass

    with pytest.raises(ValueError, match="not registered"):
        save_checkpoint(tmp_path / "x.pth", Unregistered(2))


def test_save_refuses_metadata_that_is_not_plain_data(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pth", AffineLVD(2), metadata={"when": object()})
    assert not (tmp_path / "bad.pth").exists()


def test_missing_truncated_and_foreign_files(tmp_path):
    network, _ = released_like("LVD_images_SMPL")
    missing = tmp_path / "absent.pth"
    for load in (load_checkpoint, load_paper_checkpoint):
        assert_one_line_error(lambda: load(missing, device="cpu"), missing, "no such file")

    whole = tmp_path / "whole.pth"
    torch.save(network.state_dict(), whole)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    unsafe = tmp_path / "unsafe.pth"  # a pickle that weights_only=True refuses to run
    unsafe.write_bytes(pickle.dumps(pytest.approx(1.0), protocol=2))
    for path, fragment in ((truncated, "cannot be read as a torch checkpoint"), (unsafe, "cannot be read safely"),
                           (garbage, "not a torch checkpoint (it starts with b'this', neither a zip nor a pickle)")):
        for load in (load_checkpoint, load_paper_checkpoint):
            assert_one_line_error(lambda: load(path, device="cpu"), path, fragment)


def test_files_of_the_wrong_kind(tmp_path):
    network, _ = released_like("LVD_images_SMPL")
    paper_file = tmp_path / EPOCH_FILE
    torch.save(network.state_dict(), paper_file)
    assert_one_line_error(lambda: load_checkpoint(paper_file, device="cpu"), paper_file, "load_paper_checkpoint")

    ours = save_checkpoint(tmp_path / "ours.pth", network)
    assert_one_line_error(lambda: load_paper_checkpoint(ours, device="cpu"), ours, "not a state_dict")

    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    assert_one_line_error(lambda: load_paper_checkpoint(a_list, device="cpu"), a_list, "not a state_dict")
    assert_one_line_error(lambda: load_checkpoint(a_list, device="cpu"), a_list, "not an lvd-checkpoint")

    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, other)
    assert_one_line_error(lambda: load_paper_checkpoint(other, device="cpu"), other, "not a released LVD network")

    assert_one_line_error(lambda: load_paper_checkpoint(paper_file, kind="LVD_voxels_SMPL", device="cpu"),
                          paper_file, "holds a LVD_images_SMPL network")
    assert_one_line_error(lambda: load_paper_checkpoint(paper_file, kind="pifu", device="cpu"), paper_file,
                          "unknown kind")


def test_wrong_keys_and_shapes(tmp_path):
    network, _ = released_like("LVD_images_SMPL")
    state_dict = network.state_dict()
    cases = {
        "missing": ({k: v for k, v in state_dict.items() if k != "image_filter.conv2.bn1.bias"},
                    "1 missing keys (image_filter.conv2.bn1.bias)"),
        "unexpected": (dict(state_dict, **{"fc3.weight": torch.zeros(3)}), "1 unexpected keys (fc3.weight)"),
        "shape": (dict(state_dict, **{"fc2.bias": torch.zeros(5)}), "fc2.bias (5,) vs (8,)"),
        "headless": ({k: v for k, v in state_dict.items() if not k.startswith("fc3")}, "key 'fc3.bias' is missing"),
    }
    for case, (broken, fragment) in cases.items():
        path = tmp_path / f"{case}.pth"
        torch.save(broken, path)
        assert_one_line_error(lambda: load_paper_checkpoint(path, device="cpu"), path, fragment)

    payload_path = save_checkpoint(tmp_path / "ours.pth", network)
    payload = torch.load(payload_path, weights_only=True)
    broken_payloads = {
        "shape": (dict(payload, state_dict=cases["shape"][0]), "weights do not fit PaperImageLVD"),
        "version": (dict(payload, version=99), "version 99"),
        "unknown": (dict(payload, config=dict(payload["config"], network="Nope", module="elsewhere")),
                    "unknown network 'Nope'"),
        "kwargs": (dict(payload, config=dict(payload["config"], kwargs={"colour": 1})), "cannot build"),
        "incomplete": ({k: v for k, v in payload.items() if k != "state_dict"}, "incomplete"),
    }
    for case, (broken, fragment) in broken_payloads.items():
        path = tmp_path / f"ours_{case}.pth"
        torch.save(broken, path)
        assert_one_line_error(lambda: load_checkpoint(path, device="cpu"), path, fragment)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_a_small_file_declaring_a_huge_network_allocates_nothing(tmp_path, monkeypatch):
    """A 3 MB file whose config declares gigabytes of parameters used to build them before its weights were
    checked; now the declared network is built on the meta device first and refused there."""
    payload = torch.load(save_checkpoint(tmp_path / "small.pth", AffineLVD(vertex_count=4)), weights_only=True)
    huge = dict(payload, config=dict(payload["config"], kwargs={"vertex_count": 300_000_000}))  # 3.6 G floats
    torch.save(huge, tmp_path / "huge.pth")
    built_on = []
    real_init = AffineLVD.__init__
    monkeypatch.setattr(AffineLVD, "__init__", lambda self, **k: built_on.append(torch.empty(0).device.type) or real_init(self, **k))
    assert_one_line_error(lambda: load_checkpoint(tmp_path / "huge.pth", device="cpu"), tmp_path / "huge.pth",
                          "head.weight (12, 3) vs (900000000, 3)")  # fmt: skip
    assert built_on == ["meta"]
