"""The body-parameter fit recovers known parameters from their vertices, on every backend; the paper's fit is
the baseline it must beat."""

import numpy as np
import pytest
import torch

from lvd_core.body import load_body_model
from lvd_core.fit import FitOptions, LandmarkTargets, fit_to_vertices, paper_fit, refine_to_surface, weighted_umeyama
from lvd_core.synth.shapes import sample_shape
from synthetic_models import make_model_arrays, write_official_pickle


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit_models")
    return {
        "smpl": write_official_pickle(make_model_arrays("smpl"), folder / "SMPL_NEUTRAL.pkl"),
        "mano": write_official_pickle(make_model_arrays("mano"), folder / "MANO_RIGHT.pkl"),
    }


def _known_bodies(body, batch=2, seed=1, pose_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    p = body.zero_params(batch)
    p.global_orient = torch.randn(batch, 3, generator=g)
    p.joint_pose = pose_scale * torch.randn(p.joint_pose.shape, generator=g)
    if body.shape_bounds:  # plausible people: the fit's shape prior rightly resists implausible ones
        p.shape = torch.as_tensor(sample_shape(body, np.random.default_rng(seed), batch))
    else:
        p.shape = torch.randn(p.shape.shape, generator=g)
    p.translation = torch.randn(batch, 3, generator=g)
    with torch.no_grad():
        return p, body(p).vertices


def _mean_error_mm(fitted, truth):
    return ((fitted - truth).norm(dim=-1).mean(1) * 1000).tolist()


def test_umeyama_recovers_a_similarity():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(1, 50, 3, generator=g)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]
    rotation = rotation * torch.sign(torch.linalg.det(rotation))
    target = 1.7 * source @ rotation.T + torch.tensor([1.0, -2.0, 0.5])
    r, s, t = weighted_umeyama(source, target, torch.ones(1, 50))
    assert torch.allclose(r[0], rotation, atol=1e-5) and abs(s.item() - 1.7) < 1e-5


@pytest.mark.parametrize("name", ["smpl", "mano"])
@pytest.mark.slow
def test_smpl_family_recovered_exactly_and_under_noise(name, model_files):
    body = load_body_model(name, model_files[name])
    params, truth = _known_bodies(body)
    stride = 7 if name == "smpl" else 1  # a subset, like the network's (7 does not divide the 24 joints)
    ids = torch.arange(0, body.vertex_count, stride)
    exact = fit_to_vertices(body, truth[:, ids], ids)
    assert max(_mean_error_mm(exact.vertices, truth)) < 1.0
    g = torch.Generator().manual_seed(5)
    noisy = fit_to_vertices(body, truth[:, ids] + 0.01 * torch.randn(truth[:, ids].shape, generator=g), ids)
    assert max(_mean_error_mm(noisy.vertices, truth)) < 10.0


@pytest.mark.slow
def test_anny_recovered_from_a_subset_and_under_noise():
    body = load_body_model("anny")
    params, truth = _known_bodies(body, pose_scale=0.1)
    ids = torch.arange(0, body.vertex_count, 9)
    known_size = FitOptions(fit_scale=False)  # metric scans: the size is known
    exact = fit_to_vertices(body, truth[:, ids], ids, options=known_size)
    assert max(_mean_error_mm(exact.vertices, truth)) < 1.0
    g = torch.Generator().manual_seed(5)
    noisy = fit_to_vertices(body, truth[:, ids] + 0.01 * torch.randn(truth[:, ids].shape, generator=g), ids, options=known_size)
    assert max(_mean_error_mm(noisy.vertices, truth)) < 10.0


@pytest.mark.slow
def test_the_shape_prior_gives_way_to_exact_targets():
    """A shape the prior finds unlikely (phenotypes drawn uniformly, not from anny's distribution) is still met
    where the targets are exact: the prior weakens with the residual noise (it held this one 1.9 mm off)."""
    body = load_body_model("anny")
    g = torch.Generator().manual_seed(3)
    params = body.zero_params(1)
    params.global_orient = torch.randn(1, 3, generator=g)
    params.joint_pose = 0.15 * torch.randn(params.joint_pose.shape, generator=g)
    params.shape = 0.2 + 0.6 * torch.rand(params.shape.shape, generator=g)
    with torch.no_grad():
        truth = body(params).vertices
    ids = torch.arange(0, body.vertex_count, 9)
    exact = fit_to_vertices(body, truth[:, ids], ids, options=FitOptions(fit_scale=False))
    assert max(_mean_error_mm(exact.vertices, truth)) < 1.0


@pytest.mark.slow
def test_anny_hand_recovered():
    body = load_body_model("anny-hand")
    params, truth = _known_bodies(body, pose_scale=0.2)
    fit = fit_to_vertices(body, truth)
    assert max(_mean_error_mm(fit.vertices, truth)) < 2.0


def test_wild_vertices_do_not_drag_the_fit(model_files):
    body = load_body_model("mano", model_files["mano"])
    params, truth = _known_bodies(body, batch=1)
    targets = truth.clone()
    targets[0, :20] += 0.5  # 20 of 778 vertices half a metre off
    fit = fit_to_vertices(body, targets)
    good = torch.arange(20, body.vertex_count)
    assert (fit.vertices[0, good] - truth[0, good]).norm(dim=-1).mean() < 0.002


def test_surface_refinement_pulls_onto_the_scan(model_files):
    body = load_body_model("mano", model_files["mano"])
    params, truth = _known_bodies(body, batch=1)
    g = torch.Generator().manual_seed(2)
    lvd_guess = truth + 0.004 * torch.randn(truth.shape, generator=g)  # a network's few-mm errors
    fit = fit_to_vertices(body, lvd_guess)
    refined = refine_to_surface(body, fit, lvd_guess, [truth[0]])
    before, after = _mean_error_mm(fit.vertices, truth)[0], _mean_error_mm(refined.vertices, truth)[0]
    assert after < before


@pytest.mark.slow
def test_our_fit_beats_the_papers_adam_baseline(model_files):
    body = load_body_model("mano", model_files["mano"])
    params, truth = _known_bodies(body, batch=1)
    ours = fit_to_vertices(body, truth)
    paper = paper_fit(body, truth, iterations=200)
    assert _mean_error_mm(ours.vertices, truth)[0] < _mean_error_mm(paper.vertices, truth)[0]


@pytest.mark.slow
def test_batch_items_are_solved_independently():
    """In exact arithmetic a batch gives every item what it gets alone (sizes, priors, robust scales and damping
    are per item); float64 shows it to 1e-9 m. (In float32 the unconverged solver paths part by a few mm.)"""
    _, truth = _known_bodies(load_body_model("anny-hand"), batch=2, seed=4)
    body = load_body_model("anny-hand", dtype=torch.float64)
    truth = truth.double()
    truth[1] *= 1.4  # items of different sizes
    ids = torch.arange(0, body.vertex_count, 7)
    both = fit_to_vertices(body, truth[:, ids], ids)
    alone = fit_to_vertices(body, truth[1:, ids], ids)
    assert (both.vertices[1] - alone.vertices[0]).abs().max() < 1e-9
    assert (both.item(1).vertices - alone.vertices).abs().max() < 1e-9


def _part_landmarks(body, joints: list[int], vertices: torch.Tensor, weight: float) -> LandmarkTargets:
    """One landmark per joint: the mean of the vertices it dominates, with its targets on `vertices` (B, V, 3)."""
    owner = body.skinning_weights.argmax(1)
    regressor = torch.stack([(owner == j).float() / (owner == j).sum() for j in joints])
    targets = torch.einsum("lv,bvc->blc", regressor, vertices)
    return LandmarkTargets(regressor.to_sparse(), targets, torch.full(targets.shape[:2], weight))


def test_exact_landmarks_keep_an_exact_fit_exact(model_files):
    body = load_body_model("mano", model_files["mano"])
    _, truth = _known_bodies(body, batch=2)
    ids = torch.arange(0, body.vertex_count, 5)
    landmarks = _part_landmarks(body, list(range(body.joint_count)), truth, weight=20.0)
    landmarks.weights[0, :3] = 0  # unseen ones, with targets that must not count
    landmarks.targets[0, :3] = float("nan")
    fit = fit_to_vertices(body, truth[:, ids], ids, landmarks=landmarks)
    assert max(_mean_error_mm(fit.vertices, truth)) < 1.0


def test_landmarks_pull_a_misplaced_finger_back(model_files):
    body = load_body_model("mano", model_files["mano"])
    params, truth = _known_bodies(body, batch=1)
    bent = params.detach()
    bent.joint_pose = bent.joint_pose.clone()
    bent.joint_pose[0, 0] += torch.tensor([0.0, 0.0, 0.8])  # the index finger's base joint (joint 1)
    with torch.no_grad():
        misplaced = body(bent).vertices
    finger = torch.isin(body.skinning_weights.argmax(1), torch.tensor([1, 2, 3]))
    targets = torch.where(finger[None, :, None], misplaced, truth)
    landmarks = _part_landmarks(body, [1, 2, 3], truth, weight=100.0)
    plain = fit_to_vertices(body, targets)
    guided = fit_to_vertices(body, targets, landmarks=landmarks)
    finger_error = lambda fit: (fit.vertices[0, finger] - truth[0, finger]).norm(dim=-1).mean().item()  # noqa: E731
    assert finger_error(plain) > 0.01
    assert finger_error(guided) < 0.2 * finger_error(plain)


def test_landmarks_of_the_wrong_shape_are_refused(model_files):
    body = load_body_model("mano", model_files["mano"])
    _, truth = _known_bodies(body, batch=1)
    bad = LandmarkTargets(torch.zeros(3, body.vertex_count - 1), torch.zeros(1, 3, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="one column per body vertex"):
        fit_to_vertices(body, truth, landmarks=bad)


@pytest.mark.slow
def test_closed_form_and_difference_jacobians_fit_alike():
    body = load_body_model("anny-hand")
    _, truth = _known_bodies(body, batch=1, seed=3, pose_scale=0.2)
    ids = torch.arange(0, body.vertex_count, 3)
    fits = [fit_to_vertices(body, truth[:, ids], ids, options=FitOptions(jacobian=j)) for j in ("analytic", "finite_difference")]
    assert max(_mean_error_mm(fits[0].vertices, truth)) < 1.0
    assert (fits[0].vertices - fits[1].vertices).norm(dim=-1).mean() < 1e-3
    with pytest.raises(ValueError, match="expected 'analytic' or 'finite_difference'"):
        fit_to_vertices(body, truth[:, ids], ids, options=FitOptions(jacobian="autograd"))


@pytest.mark.slow
def test_surface_refinement_keeps_the_landmarks(model_files):
    body = load_body_model("mano", model_files["mano"])
    params, truth = _known_bodies(body, batch=1)
    landmarks = _part_landmarks(body, list(range(body.joint_count)), truth, weight=2000.0)
    # the index finger's landmarks 4 mm off the scan: inside the robust scale (farther ones stop pulling)
    landmarks.targets[0, 1:4] += torch.tensor([0.0, 0.004, 0.0])
    fit = fit_to_vertices(body, truth, landmarks=landmarks)
    plain = refine_to_surface(body, fit, truth, [truth[0]])
    guided = refine_to_surface(body, fit, truth, [truth[0]], landmarks=landmarks)
    finger = torch.isin(body.skinning_weights.argmax(1), torch.tensor([1, 2, 3]))
    lift = lambda refined: (refined.vertices[0, finger] - truth[0, finger])[:, 1].mean().item()  # noqa: E731
    assert lift(guided) > lift(plain) + 0.002  # most of the 4 mm
