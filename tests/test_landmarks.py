"""Person landmarks on scans: the renderer, left/right across views, triangulation, the facing, and fits of a
real scan in another facing."""

import numpy as np
import pytest
import torch

from lvd_core.body import load_body_model
from lvd_core.fit import LandmarkTargets, fit_to_vertices

from lvd_core.canonical import scan_frame, yaw_rotation
from lvd_core.inputs.frame import QUARTER_TURNS
from lvd_core.inputs.scan import load_scan
from lvd_core.landmarks.detect import (
    INDEX,
    NAMES,
    Landmarks,
    SWAPPED,
    facing_direction,
    find_landmarks,
    resolve_sides,
    triangulate,
)
from lvd_core.landmarks.render import BACKGROUND, render_views, view_direction, view_right
from lvd_core.landmarks.learn import fit_landmark
from lvd_core.landmarks.regressor import LEARNED_NAMES, detector_regressor, landmark_targets, strongest_weights
from lvd_core.pipeline import FALLBACK_FACINGS, facing_plan, fit_scan, up_axis_turn
from lvd_core.synth import BodySampling, ScanRealism, held_out_set
from synthetic_models import make_model_arrays, write_official_pickle

REAL_SCAN = "scans/rp_dennis_posed_004_30k.obj"
YAWS = np.arange(8) * np.pi / 4


def person_landmarks() -> np.ndarray:
    """(33, 3) a standing person's landmarks facing -Y (left at +x), height 1 about z = 0: the nose ahead of the
    ears, the toes ahead of the heels, the arms held forward (so no two landmarks share a horizontal position)."""
    rng = np.random.default_rng(3)
    points = np.zeros((len(NAMES), 3))
    for name, i in INDEX.items():
        if name.startswith("right_"):
            continue
        left = np.array([rng.uniform(0.03, 0.2), rng.uniform(-0.08, 0.08), rng.uniform(-0.5, 0.45)])
        points[i] = left if name.startswith("left_") else left * [0, 1, 1]
        points[SWAPPED[i]] = left * [-1, 1, 1]
    points[INDEX["nose"]] = [0.0, -0.12, 0.42]
    for side in ("left", "right"):
        points[INDEX[f"{side}_ear"], 1] = -0.02
        points[INDEX[f"{side}_foot_index"], 1] = -0.12
        points[INDEX[f"{side}_heel"], 1] = 0.04
    return points


def views_of(points: np.ndarray, yaws: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """(K, 33, 3) what a detector that assumes it sees a face reports: in views from behind, left and right
    exchanged."""
    out = np.empty((len(yaws), len(points), 3))
    for k, yaw in enumerate(yaws):
        out[k, :, 0], out[k, :, 1], out[k, :, 2] = points @ view_right(yaw), points[:, 2], 1.0
        if view_direction(yaw) @ facing > 1e-6:  # looking at the back
            out[k] = out[k, SWAPPED]
    return out


def test_render_shows_a_person_of_the_scans_height():
    [scan] = list(held_out_set("anny", 1, realism=ScanRealism.clean(points=20_000)))
    points = scan.points.astype(np.float64)  # metres, Z up
    [front, side] = render_views(points, [0.0, np.pi / 2], size=256)
    for view in (front, side):
        person = view.image != round(BACKGROUND * 255)
        rows = np.flatnonzero(person.any(1))
        height = (rows[-1] - rows[0] + 1) * view.pixel_size
        assert height == pytest.approx(np.ptp(points[:, 2]), rel=0.03)
        columns = np.flatnonzero(person.any(0))
        assert (columns[-1] - columns[0] + 1) * view.pixel_size < 0.7 * height  # upright: narrower than tall
        # Shaded, not a flat silhouette: the person shows several grey levels.
        assert len(np.unique(view.image[person])) > 20
    # Every point lands on the person in the front view.
    columns, rows = front.to_pixels(points @ view_right(0.0), points[:, 2])
    assert (front.image[rows.astype(int), columns.astype(int)] != round(BACKGROUND * 255)).mean() > 0.99


@pytest.mark.parametrize("facing_yaw_deg", [0.0, 180.0, 63.0])
def test_back_views_sides_are_exchanged_and_the_facing_found(facing_yaw_deg):
    turn = yaw_rotation(np.radians(facing_yaw_deg))
    truth = person_landmarks() @ turn.T
    facing = turn @ [0.0, -1.0, 0.0]
    observed = views_of(truth, YAWS, facing)
    resolved = resolve_sides(observed, YAWS)
    points, confidence, _ = triangulate(resolved, YAWS, height=1.0)
    front, mirrored = facing_direction(points, confidence)
    if mirrored:  # the first view saw the back: every label was exchanged
        points = points[SWAPPED]
    assert front == pytest.approx(facing, abs=1e-6)
    assert mirrored == bool(view_direction(0.0) @ facing > 0)
    assert points == pytest.approx(truth, abs=1e-6)


def test_triangulation_recovers_points_and_drops_a_wrong_view():
    truth = person_landmarks()
    observed = views_of(truth, YAWS, np.array([0.0, -1.0, 0.0]))
    observed = resolve_sides(observed, YAWS)
    rng = np.random.default_rng(0)
    observed[..., :2] += rng.normal(0, 0.002, observed[..., :2].shape)
    wrist = INDEX["left_wrist"]
    observed[5, wrist, 0] += 0.2  # one view puts the wrist 20 cm off
    observed[2, :, 2] = 0.5  # a view less sure of everything
    points, confidence, _ = triangulate(observed, YAWS, height=1.0)
    assert np.abs(points - truth).max() < 0.006
    assert confidence[wrist] < confidence[INDEX["right_wrist"]]
    assert confidence.max() <= 1.0


def test_triangulation_counts_the_views_that_agree():
    """A wrist held in front: three views see it and agree, one more sees it 20 cm off, the rest barely see it."""
    truth = person_landmarks()
    observed = resolve_sides(views_of(truth, YAWS, np.array([0.0, -1.0, 0.0])), YAWS)
    wrist = INDEX["left_wrist"]
    observed[3:, wrist, 2] = 0.1
    observed[3, wrist, :] = [observed[3, wrist, 0] + 0.2, observed[3, wrist, 1], 0.9]
    points, confidence, agreeing = triangulate(observed, YAWS, height=1.0)
    assert agreeing[wrist] == 3
    assert points[wrist] == pytest.approx(truth[wrist], abs=1e-6)
    assert confidence[wrist] == pytest.approx(3 / 8)
    assert (np.delete(agreeing, wrist) == 8).all()


def test_no_person_no_facing():
    landmarks = find_landmarks(np.random.default_rng(0).uniform(-0.5, 0.5, (5000, 3)))
    assert not landmarks.found
    assert np.isnan(landmarks.points).all()
    assert facing_plan("body", None, landmarks) == (0.0, FALLBACK_FACINGS)
    assert facing_plan("body", 2, landmarks) == (0.0, 2)


def test_facing_plan_starts_from_the_found_facing():
    truth = person_landmarks()
    points, confidence, _ = triangulate(views_of(truth, YAWS, np.array([0.0, -1.0, 0.0])), YAWS, height=1.0)
    front, _ = facing_direction(points, confidence)
    turned = Landmarks(points, confidence, yaw_rotation(np.radians(90)) @ front, 8)
    yaw, count = facing_plan("body", None, turned)
    assert np.degrees(yaw) == pytest.approx(90.0)
    assert count == 1


def test_a_person_not_surely_found_starts_a_search_from_their_facing():
    truth = person_landmarks()
    points, confidence, _ = triangulate(views_of(truth, YAWS, np.array([0.0, -1.0, 0.0])), YAWS, height=1.0)
    front, _ = facing_direction(points, confidence)
    few_views = Landmarks(points, confidence, front, 4)
    assert few_views.found and not few_views.sure
    assert facing_plan("body", None, few_views) == (pytest.approx(0.0), FALLBACK_FACINGS)


@pytest.mark.parametrize("up", ["y", "z"])
def test_up_axis_turn_is_the_canonical_yaw_in_the_inputs_axes(up):
    to_z = QUARTER_TURNS[(up, "z")]
    point = np.array([0.3, -0.2, 0.7])
    assert to_z @ up_axis_turn(up, 0.4) @ point == pytest.approx(yaw_rotation(0.4) @ to_z @ point)


def test_strongest_weights_keep_each_rows_sum():
    weights = torch.rand(4, 50, dtype=torch.float64)
    weights /= weights.sum(1, keepdim=True)
    kept = strongest_weights(weights, 5)
    assert ((kept > 0).sum(1) == 5).all()
    assert kept.sum(1) == pytest.approx(torch.ones(4, dtype=torch.float64))


def real_scan_z_up_mm(shared_data, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The real scan (file: Y up, cm, facing +Z) turned by yaw about its up axis, Z up, millimetres."""
    import trimesh

    mesh = trimesh.load(str(shared_data / REAL_SCAN), process=False)
    vertices = np.asarray(mesh.vertices) @ QUARTER_TURNS[("y", "z")].T * 10
    return vertices @ yaw_rotation(np.radians(yaw_deg)).T, np.asarray(mesh.faces)


@pytest.mark.slow
def test_facing_found_on_the_real_scan_in_any_yaw(shared_data):
    found = []
    for yaw in (0, 90, 180, 270):
        vertices, faces = real_scan_z_up_mm(shared_data, yaw)
        scan = load_scan((vertices, faces))
        landmarks = find_landmarks(scan_frame(scan).to_canonical(scan.points.astype(np.float64)))
        assert landmarks.found
        found.append(np.degrees(landmarks.facing_yaw) - yaw)
    # The same facing each time, turned with the scan; the person faces about -Y once unturned.
    assert np.ptp(np.unwrap(np.radians(found))) < np.radians(5)
    assert abs(found[0]) < 20


@pytest.mark.slow
def test_real_scan_facing_x_fits_as_the_file_does(shared_data):
    from scipy.spatial import cKDTree

    reference = fit_scan(shared_data / REAL_SCAN)
    vertices, faces = real_scan_z_up_mm(shared_data, 90)  # faces +X
    turned = fit_scan(vertices, faces)
    assert turned.person_found and reference.person_found
    assert (turned.facing_deg - reference.facing_deg) % 360 == pytest.approx(90, abs=5)
    points = load_scan((vertices, faces)).points
    median_mm = np.median(cKDTree(turned.vertices_input).query(points)[0])
    assert median_mm == pytest.approx(reference.residual_mm, abs=3)
    assert np.isfinite(turned.landmark_disagreement_mm)


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


def test_learned_regressor_maps_a_body_to_the_detectors_landmarks(anny):
    matrix, names = detector_regressor(anny)
    assert names == list(LEARNED_NAMES)
    assert matrix.shape == (len(names), anny.vertex_count)
    assert ((matrix != 0).sum(1) <= 32).all()  # a few vertices each: the fit poses only those
    assert matrix.sum(1) == pytest.approx(torch.ones(len(names), dtype=matrix.dtype), abs=1e-5)
    with torch.no_grad():
        rest = anny(anny.zero_params(1)).vertices[0].double()
    learned = dict(zip(names, (matrix.double() @ rest).numpy()))
    coco, coco_names = anny.landmark_regressor()
    own = dict(zip(coco_names, (coco.double() @ rest).numpy()))
    # Where the detector differs from the model's keypoints (weights/anny/anny-landmarks.json): its knees, ankles
    # and heels 2-3 cm higher, its ears 3-4 cm nearer the midline; its wrists and shoulders where the model's are.
    for side in ("left", "right"):
        for joint in ("knee", "ankle", "heel"):
            assert learned[f"{side}_{joint}"][2] - own[f"{side}_{joint}"][2] > 0.015
        assert abs(own[f"{side}_ear"][0]) - abs(learned[f"{side}_ear"][0]) > 0.02
        for joint in ("wrist", "shoulder"):
            assert np.linalg.norm(learned[f"{side}_{joint}"] - own[f"{side}_{joint}"]) < 0.02
    # Mirror images: the left points are the right ones with x negated (the rest body is symmetric).
    for name in LEARNED_NAMES:
        if name.startswith("left_"):
            mirrored = learned[name.replace("left_", "right_")] * [-1, 1, 1]
            assert np.linalg.norm(learned[name] - mirrored) < 0.02


def test_a_landmarks_affine_weights_are_recovered_past_a_wrong_detection():
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(60, 6, 3))
    truth = np.array([0.5, 0.4, 0.3, -0.1, -0.2, 0.1])  # sums to 1; negative weights carry an offset
    targets = np.einsum("sci,c->si", candidates, truth) + rng.normal(0, 1e-3, (60, 3))
    targets[7] += 5.0  # one body's detection far off
    weights = fit_landmark(candidates, targets, np.ones(60), prior=np.full(6, 1 / 6), strength=1e-4)
    assert weights.sum() == pytest.approx(1.0)
    assert weights == pytest.approx(truth, abs=0.01)


def test_landmark_targets_skip_unknown_points(anny):
    points = np.zeros((len(NAMES), 3))
    points[INDEX["left_wrist"]] = np.nan
    confidence = np.full(len(NAMES), 0.5)
    targets = landmark_targets(anny, points, confidence, vertex_count=1000)
    wrist = LEARNED_NAMES.index("left_wrist")
    assert targets.targets.shape == (1, len(LEARNED_NAMES), 3) and torch.isfinite(targets.targets).all()
    assert targets.weights[0, wrist] == 0
    assert (targets.weights[0, np.arange(len(LEARNED_NAMES)) != wrist] > 0).all()
    assert targets.huber is not None


def test_huber_landmarks_pull_a_misplaced_part_from_afar(tmp_path):
    """A stand-in hand whose LVD targets put the index finger bent, with landmarks on the finger's parts where they
    truly are: under the vertex rows' own loss (Geman-McClure at the end) the landmarks, far off, stop pulling;
    under a Huber loss at the same weight they bring the finger back."""
    body = load_body_model("mano", write_official_pickle(make_model_arrays("mano"), tmp_path / "MANO_RIGHT.pkl"))
    params = body.zero_params(1)
    with torch.no_grad():
        truth = body(params).vertices
        bent = params.with_(joint_pose=params.joint_pose.clone())
        bent.joint_pose[0, 0] += torch.tensor([0.0, 0.0, 0.8])
        misplaced = body(bent).vertices
    owner = body.skinning_weights.argmax(1)
    finger = torch.isin(owner, torch.tensor([1, 2, 3]))
    regressor = torch.stack([(owner == j).to(truth.dtype) / (owner == j).sum() for j in (1, 2, 3)])
    targets = torch.where(finger[None, :, None], misplaced, truth)
    found = torch.einsum("lv,bvc->blc", regressor, truth)
    weights = torch.full((1, 3), 30.0, dtype=truth.dtype)
    error = {}
    for huber in (None, 0.005):
        fit = fit_to_vertices(body, targets, landmarks=LandmarkTargets(regressor, found, weights, huber))
        error[huber] = (fit.vertices[0, finger] - truth[0, finger]).norm(dim=-1).mean().item()
    assert error[None] > 0.01
    assert error[0.005] < 0.1 * error[None]


@pytest.mark.slow
def test_landmarks_bring_arms_held_in_front_nearer_the_truth(anny):
    coco, names = anny.landmark_regressor()
    wrists = coco[[names.index("left_wrist"), names.index("right_wrist")]].double().numpy()
    [scan] = list(held_out_set("anny", 1, realism=ScanRealism(), sampling=BodySampling(families=("arms_front",))))
    truth = wrists @ (1000 * scan.vertices_gt.astype(np.float64))
    error = {}
    for landmarks in (False, True):  # the landmarks alone: without the search for misread limbs (test_limbs)
        result = fit_scan(1000 * scan.points, None, landmarks=landmarks, limbs=False)
        error[landmarks] = np.linalg.norm(wrists @ result.vertices_input - truth, axis=1).mean()
    assert error[True] < 0.75 * error[False]
    assert error[True] < 60
