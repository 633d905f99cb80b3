"""The canonical frames the compact networks see: bodies keep their up axis; hands are turned to their
principal axes, so a hand scan in any orientation gives the same network input."""

import numpy as np
from scipy.spatial.transform import Rotation

from lvd_core.body import load_body_model
from lvd_core.canonical import canonical_frame, canonical_template, farthest_point_subset, rest_template


def _hand_points(seed=0):
    body = load_body_model("anny-hand")
    rest = rest_template(body)
    return rest[np.random.default_rng(seed).choice(len(rest), 1200, replace=False)]


def test_hand_frame_ignores_the_scans_orientation_and_units():
    points = _hand_points()
    reference = canonical_frame(points, "z", "hand").to_canonical(points)
    for seed in range(3):
        turn = Rotation.random(random_state=seed).as_matrix()
        moved = (points @ turn.T + [0.3, -2.0, 1.0]) * 100  # rotated, moved, in centimetres
        frame = canonical_frame(moved, "y", "hand", units="cm")
        assert np.abs(frame.to_canonical(moved) - reference).max() < 1e-9
        assert np.abs(frame.to_input(frame.to_canonical(moved)) - moved).max() < 1e-9
        assert np.isclose(np.linalg.det(frame.rotation), 1.0)


def test_hand_frame_is_unit_size_and_centred():
    points = _hand_points()
    canonical = canonical_frame(points, "z", "hand").to_canonical(points)
    extent = canonical.max(0) - canonical.min(0)
    assert np.isclose(extent.max(), 1.0) and np.argmax(extent) == 2
    assert np.allclose((canonical.max(0) + canonical.min(0)) / 2, 0, atol=1e-9)


def test_body_frame_keeps_up_and_height_one():
    body = load_body_model("anny")
    rest = rest_template(body)
    frame = canonical_frame(rest * 100, "z", "body", units="cm")
    canonical = frame.to_canonical(rest * 100)
    assert np.isclose(canonical[:, 2].max() - canonical[:, 2].min(), 1.0)
    assert np.allclose(frame.rotation, np.eye(3))


def test_subset_is_spread_and_template_matches_it():
    body = load_body_model("anny")
    ids = farthest_point_subset(rest_template(body), 256)
    assert len(np.unique(ids)) == 256
    template = canonical_template(body, ids)
    assert template.shape == (256, 3) and np.isclose(template[:, 2].max() - template[:, 2].min(), 1.0, atol=0.05)
