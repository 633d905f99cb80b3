"""Hand scans read in two passes: every facing once, then only the shortlisted facings at the other yaws."""

import numpy as np
import pytest
import torch

from lvd_core import pipeline
from lvd_core.body import load_body_model
from lvd_core.checkpoints import WEIGHTS_DIR, load_network, resolve_weights
from lvd_core.inputs.scan import load_scan
from lvd_core.results import StageTimer
from lvd_core.synth import BodySampling, ScanRealism, make_scan, sample_params


def _hand_scan(seed: int):
    body = load_body_model("anny-hand-right")
    rng = np.random.default_rng(seed)
    return make_scan(body, sample_params(body, rng, 1, BodySampling(families=("relaxed",))), rng, realism=ScanRealism.clean(points=8000))


def test_a_stage_that_comes_back_sums_its_times():
    lap = StageTimer()
    lap("lvd")
    lap("fit")
    first = lap.timings["lvd"]
    lap("lvd")
    assert list(lap.timings) == ["lvd", "fit"] and lap.timings["lvd"] >= first


@pytest.mark.slow
def test_reading_only_some_facings_reads_them_as_reading_all():
    """predict_vertices(only=...) reads the chosen facings of each scan (each scan its own), the same vertices
    and angles as those facings in a reading of every facing."""
    if not (WEIGHTS_DIR / "anny-hand-scan" / "checkpoint.pt").exists():
        pytest.skip("no hand network shipped")
    network = load_network(resolve_weights("anny-hand-right", None), torch.device("cpu"))
    scans = [load_scan((_hand_scan(seed).points, None), units="m", kind="hand") for seed in (1, 2)]
    every, ids = pipeline.predict_vertices(network, scans, torch.device("cpu"), 4, 2)
    only = [[3, 0], [1, 2]]
    some, same_ids = pipeline.predict_vertices(network, scans, torch.device("cpu"), 4, 2, only=only)
    assert np.array_equal(ids, same_ids)
    for all_facings, chosen, facings in zip(every, some, only):
        assert chosen.predicted.shape == (2, len(ids), 3)
        np.testing.assert_allclose(chosen.predicted, all_facings.predicted[facings], atol=1e-5)
        np.testing.assert_array_equal(chosen.angles_deg, all_facings.angles_deg[facings])


@pytest.mark.slow
def test_only_the_shortlisted_facings_are_read_at_the_other_yaws(monkeypatch):
    """A hand's every facing is read at yaw 0; the READ_AGAIN likeliest are then read at YAW_JITTER_DEG's other
    yaws and their vertices become the mean of all yaws' readings (here: the truth at yaw 0, the truth moved
    3 mm at the others, so the kept facing's LVD vertices lie 2 mm from the truth)."""
    scan = _hand_scan(5)
    body = load_body_model("anny-hand-right")
    ids = np.arange(0, body.vertex_count, 3)
    truth = scan.vertices_gt[ids].astype(np.float64)
    shift = np.array([0.003, 0.0, 0.0])
    calls = []

    def predict(network, scans, device, iterations, facings, twins, yaws_deg=(0.0,), only=None):
        calls.append((tuple(yaws_deg), only))
        count = 2 * facings if only is None else len(only[0])
        offset = shift if tuple(yaws_deg) != (0.0,) else 0.0
        scrambled = [truth[np.random.default_rng(f).permutation(len(ids))] for f in range(count)]
        predicted = np.stack([truth + offset if only is not None or f == 0 else scrambled[f] for f in range(count)])
        return [pipeline.ScanPrediction(predicted, pipeline.scan_frame(scans[0]), np.zeros(count))], ids

    monkeypatch.setattr(pipeline, "predict_vertices", predict)
    result = pipeline.fit_scan(scan.points, None, body="anny-hand-right", units="m", refine=False)
    extra = tuple(y for y in pipeline.YAW_JITTER_DEG["hand"] if y != 0.0)
    assert calls[0] == ((0.0,), None) and calls[1][0] == extra
    assert len(calls) == 2 and len(calls[1][1][0]) == pipeline.READ_AGAIN and 0 in calls[1][1][0]
    expected = truth + shift * len(extra) / (len(extra) + 1)
    np.testing.assert_allclose(result.lvd_vertices_input, expected, atol=1e-9)


@pytest.mark.slow
def test_a_hand_of_either_side_is_read_from_its_file_once(tmp_path, monkeypatch):
    """Both sides are fitted to the one Scan read (and cropped) once; the load stage is reported once."""
    if not (WEIGHTS_DIR / "anny-hand-scan" / "checkpoint.pt").exists():
        pytest.skip("no hand network shipped")
    import trimesh

    path = tmp_path / "hand.ply"
    trimesh.PointCloud(_hand_scan(3).points * 1000).export(path)
    reads = []
    monkeypatch.setattr(pipeline, "load_scan", lambda *a, **k: reads.append(a[0]) or load_scan(*a, **k))
    result = pipeline.fit_scan(path, body="anny-hand", iterations=2, refine=False)
    assert reads == [path] and result.body_name in ("anny-hand-left", "anny-hand-right") and result.timings["load"] > 0
