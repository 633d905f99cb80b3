"""fit_scan end to end: the fitted body lands on the input whatever its units, up axis and placement."""

import threading

import numpy as np
import pytest
import torch

from lvd_core.body import BodyModelError, load_body_model
from lvd_core.checkpoints import CheckpointError
from lvd_core.inputs.image import ImageInputError
from lvd_core.inputs.scan import ScanError, load_scan
from lvd_core.photo import fit_photo
from lvd_core.checkpoints import WEIGHTS_DIR, load_network, resolve_weights
from lvd_core.pipeline import fit_scan, fit_scans
from lvd_core.results import FitCancelled, InputError
from lvd_core.synth import BodySampling, ScanRealism, make_scan, sample_params, to_file_frame

# The bound: the fitted body lies on an unclothed scan of known parameters to under 1 cm on average
# (distance from each fitted vertex to the nearest of 30k scan points, ~8 mm apart: a perfect fit scores ~3 mm).
LANDS_ON_INPUT_MM = 10.0


@pytest.fixture(scope="module")
def clean_scan():
    body = load_body_model("anny")
    rng = np.random.default_rng(7)
    params = sample_params(body, rng, 1, BodySampling(yaw_range_deg=20, families=("standing", "a_pose", "walking")))
    scan = make_scan(body, params, rng, realism=ScanRealism.clean(points=30000))
    return scan


def _distance_mm(fitted: np.ndarray, scan_points: np.ndarray, metres_per_unit: float) -> float:
    """Mean distance from the fitted body's vertices to the (unclothed) scan, in mm."""
    from scipy.spatial import cKDTree

    return float(cKDTree(scan_points).query(fitted)[0].mean() * metres_per_unit * 1000)


@pytest.mark.parametrize("units,up,offset", [("m", "z", 0.0), ("cm", "y", 0.0), ("mm", "z", 2500.0)])
@pytest.mark.slow
def test_fit_lands_on_the_input_in_its_own_frame(clean_scan, units, up, offset):
    """Same body in metres Z-up, centimetres Y-up, millimetres far from the origin: the fitted mesh comes back
    in the input's frame and lies on the scan."""
    points = to_file_frame(clean_scan.points, "z", units=units, up_axis=up) + offset
    result = fit_scan(points, None, facings=1)
    assert result.units == units
    metres_per_unit = {"m": 1.0, "cm": 0.01, "mm": 0.001}[units]
    assert _distance_mm(result.vertices_input, points, metres_per_unit) < LANDS_ON_INPUT_MM


@pytest.mark.slow
def test_progress_and_cancel(clean_scan):
    seen = []
    fit_scan(clean_scan.points, None, facings=1, refine=False, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(FitCancelled):
        fit_scan(clean_scan.points, None, cancel=cancel)


BODY_WEIGHTS = WEIGHTS_DIR / "anny-body-scan" / "checkpoint.pt"


def test_bad_inputs_give_one_line_errors(tmp_path, clean_scan):
    empty = tmp_path / "empty.obj"
    empty.write_text("")
    cases = [
        (ScanError, lambda: fit_scan(empty)),
        (ScanError, lambda: fit_scan(np.full((500, 3), np.nan), None)),
        (BodyModelError, lambda: fit_scan(clean_scan.points, None, body="smpl")),
        (BodyModelError, lambda: fit_scan(clean_scan.points, None, body="mano")),
        (InputError, lambda: fit_scan(clean_scan.points, None, body="anny-hand", weights=BODY_WEIGHTS)),
        (CheckpointError, lambda: fit_scan(clean_scan.points, None, weights=tmp_path / "missing.pt")),
        (ImageInputError, lambda: fit_photo(np.zeros((256, 256, 3), np.uint8))),  # no person in a black photo
    ]
    for error, call in cases:
        with pytest.raises(error) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)


def test_network_for_another_body_is_refused(clean_scan):
    hand_weights = WEIGHTS_DIR / "anny-hand-scan" / "checkpoint.pt"
    if not hand_weights.exists():
        pytest.skip("no hand network shipped")
    with pytest.raises(InputError, match="trained for"):
        fit_scan(clean_scan.points, None, weights=hand_weights)


@pytest.mark.slow
def test_fit_is_deterministic(clean_scan):
    a = fit_scan(clean_scan.points, None, facings=1, refine=False)
    b = fit_scan(clean_scan.points, None, facings=1, refine=False)
    assert np.allclose(a.vertices_input, b.vertices_input, atol=1e-5)
    assert torch.equal(a.params.joint_pose, b.params.joint_pose)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.slow
def test_hands_of_both_sides_land_on_their_scans(side):
    """The left hand is fitted with the right hand's network on the mirrored scan, then mirrored back.
    Measured with the shipped network (clean synthetic hand, any orientation): 2.0-2.5 mm from the scan."""
    from scipy.spatial import cKDTree

    body = load_body_model(f"anny-hand-{side}")
    rng = np.random.default_rng(3)
    params = sample_params(body, rng, 1, BodySampling(yaw_range_deg=180, families=("relaxed", "open")))
    scan = make_scan(body, params, rng, realism=ScanRealism.clean(points=20000))
    result = fit_scan(scan.points, None, body=f"anny-hand-{side}", units="m")
    assert result.body_name == f"anny-hand-{side}"
    assert cKDTree(scan.points).query(result.vertices_input)[0].mean() < 0.006  # metres; a hand is ~0.19 m long


@pytest.mark.parametrize("jitter_deg", [(-25.0,), (25.0,), (-10.0, 0.0, 10.0)])
@pytest.mark.slow
def test_each_yaw_reading_of_a_hand_comes_back_to_the_scan(jitter_deg):
    """LVD reads a hand at extra yaws (test-time augmentation): each reading's vertices are turned back into
    the scan's frame before they are averaged. A reading left turned by 25 degrees would put a 19 cm hand's
    vertices ~2-4 cm off; turned back, the best facing's lie within the network's error of the truth."""
    import lvd_core.pipeline as pipeline

    if not (WEIGHTS_DIR / "anny-hand-scan" / "checkpoint.pt").exists():
        pytest.skip("no hand network shipped")
    body = load_body_model("anny-hand-right")
    rng = np.random.default_rng(11)
    scan = make_scan(body, sample_params(body, rng, 1, BodySampling(families=("open",))), rng, realism=ScanRealism.clean(points=8000))
    network = load_network(resolve_weights("anny-hand-right", None), torch.device("cpu"))
    seen = load_scan((scan.points, None), units="m", kind="hand")
    [prediction], ids = pipeline.predict_vertices(network, [seen], torch.device("cpu"), 10, 4, yaws_deg=jitter_deg)
    errors = np.linalg.norm(prediction.predicted - scan.vertices_gt[ids], axis=2).mean(1)  # (facings,)
    assert errors.min() < 0.008  # metres; the network's held-out mean is ~4 mm


def test_a_body_read_mirrored_predicts_the_twins_of_the_networks_vertices(clean_scan):
    """A symmetric body is also read left-right mirrored: the second half of the predicted vertices stands for
    the twins of the network's vertices. Left unmatched (vertex i for vertex i) they would lie on the wrong
    side of the body, ~30 cm off; matched to their twins, within the network's error like the first half."""
    import lvd_core.pipeline as pipeline

    body = load_body_model("anny")
    twins = body.mirror_twins()
    network = load_network(resolve_weights("anny", None), torch.device("cpu"))
    seen = load_scan((clean_scan.points, None), units="m", kind="body")
    [prediction], ids = pipeline.predict_vertices(network, [seen], torch.device("cpu"), 10, 1, twins)
    n = network.vertex_count
    assert prediction.predicted.shape == (1, 2 * n, 3) and np.array_equal(ids[n:], twins[ids[:n]])
    errors = np.linalg.norm(prediction.predicted[0] - clean_scan.vertices_gt[ids], axis=1)
    assert errors[:n].mean() < 0.03 and errors[n:].mean() < 0.03  # metres


def test_only_symmetric_bodies_have_mirror_twins():
    twins = load_body_model("anny").mirror_twins()
    assert np.array_equal(twins[twins], np.arange(len(twins))) and (twins != np.arange(len(twins))).mean() > 0.9
    assert load_body_model("anny-hand-right").mirror_twins() is None


@pytest.mark.slow
def test_the_facing_whose_vertices_the_body_model_can_take_is_chosen(monkeypatch):
    """Of several facings, the fit keeps the one whose LVD vertices a body of the model can take. Here one
    facing predicts the true vertices and the others the same points in a scrambled vertex order: all cover
    the scan equally well, only the true one is a hand."""
    import lvd_core.pipeline as pipeline

    body = load_body_model("anny-hand-right")
    rng = np.random.default_rng(5)
    scan = make_scan(body, sample_params(body, rng, 1, BodySampling(families=("relaxed",))), rng, realism=ScanRealism.clean(points=8000))
    ids = np.arange(0, body.vertex_count, 3)
    true_facing, angles = 5, np.arange(8) * 45.0

    def predict(network, scans, device, iterations, facings, twins):
        truth = scan.vertices_gt[ids].astype(np.float64)
        predicted = np.stack([truth if f == true_facing else truth[rng.permutation(len(ids))] for f in range(len(angles))])
        return [pipeline.ScanPrediction(predicted, pipeline.scan_frame(scans[0]), angles)], ids

    monkeypatch.setattr(pipeline, "predict_vertices", predict)
    monkeypatch.setattr(pipeline, "YAW_JITTER_DEG", {})  # the told vertices are not read again
    result = fit_scan(scan.points, None, body="anny-hand-right", units="m")
    assert result.facing_deg == angles[true_facing]
    assert np.linalg.norm(result.vertices_input - scan.vertices_gt, axis=1).mean() < 0.003  # metres


@pytest.mark.slow
def test_of_facings_the_model_takes_the_one_on_the_scan_is_kept(monkeypatch):
    """When several facings' LVD vertices are bodies of the model, the fit keeps the one lying on the scan. Here
    one facing predicts the true vertices with 2 mm of noise, another an exact hand of another pose 4 cm beside
    the scan (which its own vertices fit better), the others scrambled vertex orders (no hand at all)."""
    import lvd_core.pipeline as pipeline

    body = load_body_model("anny-hand-right")
    rng = np.random.default_rng(7)
    hands = [make_scan(body, sample_params(body, rng, 1, BodySampling(families=(family,))), rng, realism=ScanRealism.clean(points=8000))
             for family in ("relaxed", "open")]  # fmt: skip
    scan = hands[0]
    ids = np.arange(0, body.vertex_count, 3)
    true_facing, beside_facing, angles = 2, 6, np.arange(8) * 45.0
    truth = scan.vertices_gt[ids].astype(np.float64)
    noisy, beside = truth + rng.normal(0, 0.002, truth.shape), hands[1].vertices_gt[ids] + [0.04, 0.0, 0.0]

    def predict(network, scans, device, iterations, facings, twins):
        predicted = np.stack([noisy if f == true_facing else beside if f == beside_facing else truth[rng.permutation(len(ids))]
                              for f in range(len(angles))])  # fmt: skip
        return [pipeline.ScanPrediction(predicted, pipeline.scan_frame(scans[0]), angles)], ids

    monkeypatch.setattr(pipeline, "predict_vertices", predict)
    monkeypatch.setattr(pipeline, "YAW_JITTER_DEG", {})  # the told vertices are not read again
    result = fit_scan(scan.points, None, body="anny-hand-right", units="m", refine=False)
    assert result.facing_deg == angles[true_facing]


@pytest.mark.slow
def test_a_batch_fits_each_scan_as_alone_and_reports_bad_ones_in_place(clean_scan):
    """fit_scans batches the descent and the fit (for a GPU): each scan gets the result it gets alone, in
    its own units (metres and centimetres in one batch), and a bad scan its error, in its place."""
    in_cm = to_file_frame(clean_scan.points, "z", units="cm", up_axis="y")
    results = fit_scans([(clean_scan.points, None), (np.full((500, 3), np.nan), None), (in_cm, None)], refine=False)
    assert isinstance(results[1], ScanError)
    assert [r.units for r in (results[0], results[2])] == ["m", "cm"]
    alone = fit_scan(in_cm, None, refine=False)
    # The same fit up to float32 rounding, which the unconverged solver paths amplify to a few millimetres
    # (measured: 3.7 mm mean, 32 mm at most with the landmark targets, 13 mm without; exactly equal in float64,
    # see test_fit.py), far below a mix-up of the batch's items (decimetres); the bound is in centimetres.
    difference = np.linalg.norm(results[2].vertices_input - alone.vertices_input, axis=1)
    assert difference.mean() < 1.0 and difference.max() < 5.0
    assert results[0].batch_size == 2 and alone.batch_size == 1


@pytest.mark.slow
def test_authors_voxel_checkpoint_runs_the_paper_pipeline(tmp_path, clean_scan):
    """A small look-alike of the released LVD_voxels_SMPL file (random values, released key layout) fits a
    synthetic SMPL file through the paper's conventions (Y up, height 1.5, 128^3 grid, start at the origin)."""
    from lvd_core.nets.paper import PaperScanLVD
    from synthetic_models import make_model_arrays, write_official_pickle

    torch.manual_seed(0)
    network = PaperScanLVD(vertex_count=6890, level_channels=(4, 4, 4, 4, 4, 4, 4), head_widths=(16, 16, 16, 16, 16))
    torch.save(network.state_dict(), tmp_path / "net_epoch_1_id_img_encoder.pth")
    smpl = write_official_pickle(make_model_arrays("smpl"), tmp_path / "SMPL_NEUTRAL.pkl")
    result = fit_scan(clean_scan.points, None, body="smpl", model_path=smpl, weights=tmp_path / "net_epoch_1_id_img_encoder.pth",
                      iterations=2, refine=False)  # fmt: skip
    assert result.body_name == "smpl" and result.vertices_input.shape == (6890, 3)
    assert result.lvd_vertices_input.shape == (6890, 3) and np.isfinite(result.vertices_input).all()


@pytest.mark.slow
def test_a_fit_the_network_misread_is_doubtful(monkeypatch):
    """When the network puts vertices on the wrong parts (here half of them moved to other vertices' places,
    all still on the scan), no hand of the model takes them: the fit says it is doubtful and why. The same scan
    read to about 1.5 mm (what the hand network does) is not."""
    import lvd_core.pipeline as pipeline

    body = load_body_model("anny-hand-right")
    rng = np.random.default_rng(3)
    scan = make_scan(body, sample_params(body, rng, 1, BodySampling(families=("open",))), rng, realism=ScanRealism.clean(points=8000))
    ids = np.arange(0, body.vertex_count, 3)
    truth = scan.vertices_gt[ids].astype(np.float64)
    misread = truth.copy()
    half = rng.choice(len(ids), len(ids) // 2, replace=False)
    misread[half] = truth[rng.permutation(half)]
    results = {}
    for name, predicted in (("read", truth + rng.normal(0, 0.001, truth.shape)), ("misread", misread)):
        def predict(network, scans, device, iterations, facings, twins, predicted=predicted):
            return [pipeline.ScanPrediction(predicted[None], pipeline.scan_frame(scans[0]), np.zeros(1))], ids

        monkeypatch.setattr(pipeline, "predict_vertices", predict)
        monkeypatch.setattr(pipeline, "YAW_JITTER_DEG", {})  # the told vertices are not read again
        results[name] = fit_scan(scan.points, None, body="anny-hand-right", units="m", facings=1)
    assert not results["read"].doubtful and results["read"].disagreement_mm < 2
    assert results["misread"].doubtful and results["misread"].quality_label(short=True).endswith(", check")
    assert "doubtful: the network's vertices lie" in results["misread"].quality_label()


# -- the real sample inputs (../shared/data; skipped without it) ---------------------------------------------
def _scan_to_body_mm(result, path, kind):
    from scipy.spatial import cKDTree

    points = load_scan(path, kind=kind).points
    distance = cKDTree(result.vertices_input).query(points)[0]
    return np.median(distance), np.percentile(distance, 90)


@pytest.mark.slow
def test_real_body_scan_end_to_end(shared_data):
    """The clothed RenderPeople sample (cm, Y up): the body is found under the clothes. Bound: the issue's aim,
    a median scan-to-body distance <= 20 mm; the shipped network measures 14.2 mm (p90 29 mm; see the README)."""
    path = shared_data / "scans" / "rp_dennis_posed_004_30k.obj"
    result = fit_scan(path)
    assert result.units == "cm"
    median_cm, p90_cm = _scan_to_body_mm(result, path, "body")
    assert median_cm * 10 < 20 and p90_cm * 10 < 50
    assert not result.doubtful  # its LVD vertices lie 21-22 mm (median) from the body, the bound is 28


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.slow
def test_real_hand_scans_end_to_end(shared_data, index):
    """Unitless hand reconstructions (one holds an object): fitted with the Anny hand at the scan's own size.
    Bound: measured medians are about 2-4% of the scan's size (4.0-6.6 mm of a model-sized hand, see
    weights/anny-hand-scan/manifest.json); 8% still fails a misplaced or wrongly turned hand."""
    if not (WEIGHTS_DIR / "anny-hand-scan" / "checkpoint.pt").exists():
        pytest.skip("no hand network shipped")
    path = shared_data / "hands" / f"sample_{index}.obj"
    result = fit_scan(path, body="anny-hand")
    assert result.units == "unitless" and result.vertices_input.shape == (1609, 3)
    median, _ = _scan_to_body_mm(result, path, "hand")
    scan_size = np.ptp(load_scan(path, kind="hand").points, axis=0).max()  # ~1.5 units
    assert 0.4 * scan_size < np.ptp(result.vertices_input, axis=0).max() < 1.2 * scan_size
    assert median < 0.08 * scan_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_batch_on_cuda_fits_as_on_the_cpu(clean_scan):
    """The batched GPU path (what `lvd batch` uses on CUDA) lands where the CPU fit does."""
    scans = [(clean_scan.points, None), (clean_scan.points + np.array([1.0, 0.0, 0.0]), None)]
    on_gpu = fit_scans(scans, device="cuda", refine=False)
    on_cpu = fit_scan(clean_scan.points, None, device="cpu", refine=False)
    shifted = on_gpu[1].vertices_input - np.array([1.0, 0.0, 0.0])
    for vertices in (on_gpu[0].vertices_input, shifted):
        assert np.linalg.norm(vertices - on_cpu.vertices_input, axis=1).mean() < 0.005  # metres
