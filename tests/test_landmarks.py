"""Person landmarks on scans: the renderer, left/right across views, triangulation, the facing, and fits of a
real scan in another facing."""

import numpy as np
import pytest
import torch

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
from lvd_core.pipeline import FALLBACK_FACINGS, facing_plan, fit_scan, strongest_weights, up_axis_turn
from lvd_core.synth import ScanRealism, held_out_set

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
    points, confidence = triangulate(resolved, YAWS, height=1.0)
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
    points, confidence = triangulate(observed, YAWS, height=1.0)
    assert np.abs(points - truth).max() < 0.006
    assert confidence[wrist] < confidence[INDEX["right_wrist"]]
    assert confidence.max() <= 1.0


def test_no_person_no_facing():
    landmarks = find_landmarks(np.random.default_rng(0).uniform(-0.5, 0.5, (5000, 3)))
    assert not landmarks.found
    assert np.isnan(landmarks.points).all()
    assert facing_plan("body", None, landmarks) == (0.0, FALLBACK_FACINGS)
    assert facing_plan("body", 2, landmarks) == (0.0, 2)


def test_facing_plan_starts_from_the_found_facing():
    truth = person_landmarks()
    points, confidence = triangulate(views_of(truth, YAWS, np.array([0.0, -1.0, 0.0])), YAWS, height=1.0)
    front, _ = facing_direction(points, confidence)
    turned = Landmarks(points, confidence, yaw_rotation(np.radians(90)) @ front, 8)
    yaw, count = facing_plan("body", None, turned)
    assert np.degrees(yaw) == pytest.approx(90.0)
    assert count == 1


def test_a_person_not_surely_found_starts_a_search_from_their_facing():
    truth = person_landmarks()
    points, confidence = triangulate(views_of(truth, YAWS, np.array([0.0, -1.0, 0.0])), YAWS, height=1.0)
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
