"""The body under the clothes: inside/outside against a scan, a refinement that keeps the body inside a loose
garment, a shape prior that makes implausible people costly, and the fitted phenotypes a user reads."""

import numpy as np
import pytest
import torch
import trimesh

from lvd_core.body import load_body_model
from lvd_core.clothing import outside_scan, pair_weights, surface_pairing
from lvd_core.fit import FitOptions, fit_to_vertices, refine_to_surface
from lvd_core.measurements import readable_phenotypes
from lvd_core.synth import ScanRealism, make_scan
from lvd_core.synth.shapes import sample_shape
from synthetic_models import make_model_arrays, write_official_pickle


def test_a_sphere_inside_a_larger_one_is_inside_and_not_the_other_way():
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    large = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    assert not outside_scan(small.vertices, small.faces, large.vertices).any()
    assert outside_scan(large.vertices, large.faces, small.vertices).all()
    # within the tolerance, the larger sphere does not count as outside the smaller one
    assert not outside_scan(large.vertices, large.faces, small.vertices, tolerance=0.11).any()


def test_pairs_pull_hard_from_outside_weakly_from_inside_and_fully_on_the_skin():
    offsets = np.array([-0.03, 0.03, 0.0, 0.001, 0.01, 0.01, -0.03])
    sideways = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05])
    weights = pair_weights(offsets, sideways, bare=np.array([False, False, False, False, False, True, False]))
    assert weights[0] > 1.0 > 0.2 > weights[1]  # body out of the clothes / cloth over the body
    assert weights[6] < 0.2  # a scan point far sideways (a hole's rim) says nothing about outside
    assert weights[2] == pytest.approx(1.0) and weights[3] > 0.9  # on the skin
    assert weights[4] < 0.2 < 0.5 < weights[5]  # 1 cm of cloth over a shirt; a hand 1 cm inside is still skin


def _garment_scan(body, seed=3):
    """A clean synthetic scan of a plausible adult in a loose garment (skirt or coat), and its truth."""
    rng = np.random.default_rng(seed)
    params = body.zero_params(1)
    params.shape = torch.as_tensor(sample_shape(body, rng, 1))
    params.joint_pose[:] = 0.0
    realism = ScanRealism.clean(points=20_000)
    realism = ScanRealism(**{**realism.__dict__, "loose_garment_probability": 1.0, "tight_clothes_probability": 1.0})
    scan = make_scan(body, params, rng, realism=realism)
    assert "garment_length" in scan.info
    return scan


@pytest.mark.slow
def test_a_loose_garment_does_not_inflate_the_body():
    body = load_body_model("anny")
    scan = _garment_scan(body)
    truth = torch.as_tensor(scan.vertices_gt)[None]
    ids = torch.arange(0, body.vertex_count, 9)
    g = torch.Generator().manual_seed(0)
    lvd_guess = truth[:, ids] + 0.01 * torch.randn(truth[:, ids].shape, generator=g)  # a network's errors
    options = FitOptions(fit_scale=False, shape_restarts=False, full_iterations=4, robust_iterations=2, surface_iterations=6)
    fit = fit_to_vertices(body, lvd_guess, ids, options=options)
    points = [torch.as_tensor(scan.points)]
    plain = refine_to_surface(body, fit, lvd_guess, points, ids, options, pairing=surface_pairing)
    clothed = refine_to_surface(body, fit, lvd_guess, points, ids, options)

    def hip_error_mm(result):
        fitted = readable_phenotypes(body, result.params)[0]["hip_m"]
        return 1000 * abs(fitted - readable_phenotypes(body, scan.params)[0]["hip_m"])

    assert hip_error_mm(clothed) < 0.5 * hip_error_mm(plain)
    assert outside_scan(clothed.vertices[0].numpy(), body.faces, scan.points, 0.005).mean() < 0.05


def _shape(body, **phenotypes) -> torch.Tensor:
    shape = body.default_shape()[None].clone()
    for name, value in phenotypes.items():
        shape[0, body.shape_names.index(name)] = value
    return shape


def test_the_shape_prior_makes_implausible_people_costly():
    body = load_body_model("anny")
    cost = lambda **p: float(body.shape_prior_residuals(_shape(body, **p)).square().sum())  # noqa: E731
    man = dict(gender=0.1, age=0.8, muscle=0.4, weight=0.5, height=0.4)
    assert cost(**man) < 3.0
    assert cost(**{**man, "weight": 0.9999}) > 4 * cost(**man)  # weight at its limit
    assert cost(gender=0.9, age=0.38, weight=0.7, height=0.2) > 25 * cost(**man)  # a child-like adult


def test_betas_keep_the_standard_normal_prior(tmp_path):
    body = load_body_model("smpl", write_official_pickle(make_model_arrays("smpl"), tmp_path / "SMPL_NEUTRAL.pkl"))
    betas = torch.randn(2, body.shape_size)
    assert body.shape_prior() is None
    assert torch.equal(body.shape_prior_residuals(betas), betas)
    assert list(readable_phenotypes(body, body.zero_params(1))[0]) == ["height_m"]


def test_readable_phenotypes_name_sex_age_and_size():
    body = load_body_model("anny")
    params = body.zero_params(3)
    params.shape = torch.cat([_shape(body, gender=0.0, age=0.8), _shape(body, gender=1.0, age=0.8), _shape(body, gender=1.0, age=0.8)])
    params.scale[2] = 1.1
    man, woman, taller = readable_phenotypes(body, params)
    assert man["gender"] == 0.0 and woman["gender"] == 1.0
    assert 30 < man["age_years"] < 60
    assert 1.6 < woman["height_m"] < man["height_m"] < 1.9
    assert taller["height_m"] == pytest.approx(1.1 * woman["height_m"], rel=1e-3)
    assert 0.7 < man["waist_m"] < 1.1 and man["chest_m"] > man["waist_m"]


@pytest.mark.slow
def test_the_real_scans_fitted_weight_is_not_at_a_limit(shared_data):
    from lvd_core.pipeline import fit_scan

    result = fit_scan(shared_data / "scans" / "rp_dennis_posed_004_30k.obj", body="anny")
    readable = readable_phenotypes(load_body_model("anny"), result.params)[0]
    assert 0.02 < readable["weight"] < 0.98
    assert 1.6 < readable["height_m"] < 2.0

