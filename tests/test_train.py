"""The scan training loop: pair sampling, the learning-rate schedule, resuming with the checkpoint's recipe."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lvd_core.checkpoints import load_checkpoint
from lvd_core.body import load_body_model
from lvd_core.canonical import canonical_frame
from lvd_core.synth import ScanRealism, held_out_set
from lvd_core.train import TRAVEL_FLOOR, TrainConfig, _progress, canonical_view, learning_rate_factor, sample_pairs, train

TINY_NETWORK = dict(channels=[4, 4, 8, 8], global_width=8, embed_width=8, hidden=16)


def test_travel_share_draws_far_travelling_vertices_more_often():
    template = np.zeros((100, 3))
    gt = template.copy()
    gt[:5, 2] = 0.5  # five vertices moved half the body's height
    rng = np.random.default_rng(0)
    _, uniform = sample_pairs(rng, gt, template, 40_000, 0.6, travel_share=0.0)
    _, weighted = sample_pairs(rng, gt, template, 40_000, 0.6, travel_share=0.5)
    moved_weight = 5 * (0.5 + TRAVEL_FLOOR)
    expected = 0.5 * 0.05 + 0.5 * moved_weight / (moved_weight + 95 * TRAVEL_FLOOR)
    assert abs((uniform < 5).mean() - 0.05) < 0.01
    assert abs((weighted < 5).mean() - expected) < 0.01


def test_pairs_are_near_their_vertices_and_inside_the_box():
    rng = np.random.default_rng(1)
    template = rng.uniform(-0.3, 0.3, size=(50, 3))
    gt = template + rng.normal(scale=0.05, size=(50, 3))
    points, vertex = sample_pairs(rng, gt, template, 5000, 0.6, travel_share=0.5)
    assert points.shape == (5000, 3) and vertex.shape == (5000,) and vertex.max() < 50
    distance = np.linalg.norm(points - gt[vertex], axis=1)
    assert np.median(distance) < 0.1  # most pairs probe the vertex's neighbourhood
    assert np.abs(points).max() < 0.9


def test_learning_rate_holds_then_decays_to_zero_by_steps_or_by_time():
    config = TrainConfig(steps=100)
    assert [learning_rate_factor(s, config, 0.0) for s in (0, 49, 75, 100)] == [1.0, 1.0, 0.5, 0.0]
    timed = TrainConfig(steps=10**6, minutes=10)
    assert learning_rate_factor(5, timed, 60.0) == 1.0  # 10% of the time
    assert abs(learning_rate_factor(5, timed, 450.0) - 0.5) < 1e-9  # 75% of the time
    assert learning_rate_factor(5, timed, 600.0) == 0.0


def test_training_frames_ignore_outliers_as_the_loaded_scans_of_inference_do():
    """Outliers (a scan's stray points, up to 10% outside its box) must not widen the canonical frame training
    sees: inference cleans them away (load_scan), so a widened training frame shows the network bodies
    smaller than it will meet them."""
    body = load_body_model("anny")
    scan = held_out_set("anny", 1, realism=ScanRealism.clean())[0]
    clean_scale = canonical_frame(scan.points, "z", "body").scale
    low, high = scan.points.min(0), scan.points.max(0)
    margin = 0.1 * (high - low)
    strays = np.random.default_rng(0).uniform(low - margin, high + margin, size=(60, 3)).astype(np.float32)
    noisy = replace(scan, points=np.concatenate([scan.points, strays]))
    assert canonical_frame(noisy.points, "z", "body").scale < 0.9 * clean_scale  # raw: the strays set the box
    assert abs(canonical_view(noisy, body)[0].scale / clean_scale - 1) < 0.01


def test_progress_counts_down_to_the_time_limit_when_it_comes_first():
    # 100 steps in 100 s: 1 step/s, 10,000 steps to go
    assert _progress(100, 10_100, 0.5, 100, 100.0).endswith("left 2:46:40")
    assert _progress(100, 10_100, 0.5, 100, 100.0, minutes=10).endswith("left 0:08:20")  # 600 s - 100 s


def test_training_saves_and_resumes_with_the_checkpoints_recipe(tmp_path):
    config = TrainConfig(body="anny-hand-right", out=str(tmp_path), subset=32, steps=2, batch=1, pairs=64, workers=0,
                         yaw_range_deg=180.0, seed=3, validate_every=0, network=TINY_NETWORK)  # fmt: skip
    train(config, log=lambda message: None)
    network = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu")
    assert network.checkpoint_metadata["steps"] == 2 and network.vertex_count == 32
    assert all(torch.isfinite(p).all() for p in network.parameters())
    # Resumed with the command line's defaults for the recipe: the checkpoint's recipe wins, the budget is new.
    lines = []
    train(TrainConfig(body="anny-hand-right", out=str(tmp_path), steps=3, workers=0, validate_every=0), log=lines.append)
    assert lines[0] == "resuming at step 2"
    meta = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu").checkpoint_metadata
    saved = meta["train_config"]
    assert meta["steps"] == 3 and (saved["subset"], saved["seed"], saved["yaw_range_deg"], saved["pairs"]) == (32, 3, 180.0, 64)
    assert saved["network"] == TINY_NETWORK
    # Shipped weights carry no optimiser state: a run continues from the checkpoint's own step count.
    (tmp_path / "train_state.pt").unlink()
    before = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu").state_dict()
    train(TrainConfig(body="anny-hand-right", out=str(tmp_path), steps=3, workers=0, validate_every=0), log=lambda m: None)
    after = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # already at step 3: nothing more to train


def test_training_precision_is_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    from lvd_core.devices import training_autocast

    cpu = torch.device("cpu")
    assert training_autocast(cpu, "fp32") is None and training_autocast(cpu, "bf16") is torch.bfloat16
    for native in (False, True):
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, probe, lambda: native, raising=False)
        assert training_autocast(cpu) is (torch.bfloat16 if native else None)
    with pytest.raises(ValueError, match="expected 'auto', 'bf16' or 'fp32'"):
        training_autocast(cpu, "fp16")


def test_bfloat16_training_keeps_float32_weights_and_near_float32_outputs(tmp_path):
    """Mixed precision computes the network in bfloat16 but stores float32 weights, whose bfloat16 outputs stay
    within bfloat16's rounding of the float32 ones."""
    from lvd_core.train import TrainingExamples

    config = TrainConfig(body="anny-hand-right", out=str(tmp_path), subset=32, steps=2, batch=1, pairs=64, workers=0,
                         validate_every=0, network=TINY_NETWORK, precision="bf16")  # fmt: skip
    network = load_checkpoint(train(config, log=lambda message: None), device="cpu")
    assert network.checkpoint_metadata["precision"] == "bf16"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in network.parameters())
    grid, queries, vertex, _ = next(iter(TrainingExamples(config, np.arange(32), network.template.numpy(), start=0)))
    with torch.no_grad():
        def offsets(dtype):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return network.predict_own_offsets(network.encode(grid[None]), queries[None], vertex[None]).float()
        full, mixed = offsets(None), offsets(torch.bfloat16)
    assert torch.allclose(mixed, full, atol=0.02 * full.abs().max().item())


def test_a_network_of_another_grid_size_trains_and_fits(tmp_path, monkeypatch):
    """A network's grid follows its settings (here 16^3 over a wider box), in training and at inference."""
    from lvd_core.nets.compact import CompactScanLVD
    from lvd_core.pipeline import fit_scan
    from lvd_core.train import NETWORK_SIZES

    seen = []  # the resolution of every grid the network reads
    encode = CompactScanLVD.encode
    monkeypatch.setattr(CompactScanLVD, "encode", lambda self, grids: seen.append(grids.shape[-1]) or encode(self, grids))

    assert NETWORK_SIZES["large"]["resolution"] == 64
    network_settings = dict(TINY_NETWORK, resolution=16, box_half_size=0.7)
    config = TrainConfig(body="anny-hand-right", out=str(tmp_path), subset=32, steps=1, batch=1, pairs=64, workers=0,
                         validate_every=0, network=network_settings)  # fmt: skip
    checkpoint = train(config, log=lambda message: None)
    network = load_checkpoint(checkpoint, device="cpu")
    assert (network.resolution, network.box_half_size) == (16, 0.7)
    [scan] = held_out_set("anny-hand-right", 1, realism=ScanRealism.clean(points=3000))
    result = fit_scan(scan.points, None, body="anny-hand-right", weights=checkpoint, units="m", refine=False, facings=1)
    assert result.vertices_input.shape == (1609, 3) and np.isfinite(result.vertices_input).all()
    assert len(seen) >= 2 and set(seen) == {16}


@pytest.mark.slow
def test_lvd_train_and_fit_with_a_users_smpl_file(tmp_path):
    """The licensed-model path end to end with a synthetic file in the official format: `lvd train --body smpl
    --model-file ...` writes a checkpoint that `lvd fit --body smpl --model-file ... --weights ...` uses."""
    from lvd_core.cli import main
    from lvd_core.pipeline import fit_scan
    from lvd_core.synth import make_scan, sample_params
    from synthetic_models import make_model_arrays, write_official_pickle

    from lvd_core.body import load_body_model

    model_file = write_official_pickle(make_model_arrays("smpl"), tmp_path / "SMPL_NEUTRAL.pkl")
    out = tmp_path / "smpl-net"
    assert main(["train", "--body", "smpl", "--model-file", str(model_file), "--out", str(out), "--steps", "2",
                 "--batch", "1", "--subset", "64"]) == 0  # fmt: skip
    network = load_checkpoint(out / "checkpoint.pt", device="cpu")
    assert network.checkpoint_metadata["body"] == "smpl" and network.vertex_count == 64
    body = load_body_model("smpl", model_file)
    scan = make_scan(body, sample_params(body, np.random.default_rng(0), 1), np.random.default_rng(1))
    result = fit_scan(scan.points, None, body="smpl", model_path=model_file, weights=out / "checkpoint.pt", units="m", refine=False)
    assert result.vertices_input.shape == (body.vertex_count, 3) and np.isfinite(result.vertices_input).all()
