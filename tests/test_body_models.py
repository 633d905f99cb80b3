"""The body-model interface on every backend: Anny body and hands (shipped), SMPL and MANO (synthetic files)."""

import pickle

import numpy as np
import pytest
import torch

from lvd_core.body import BodyModelError, load_body_model
from lvd_core.body.smpl_model import SMPLFamilyBody
from synthetic_models import make_model_arrays, write_npz, write_official_pickle


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    smpl, mano = make_model_arrays("smpl"), make_model_arrays("mano")
    mano_left = dict(mano, v_template=mano["v_template"] * [-1, 1, 1])  # mirrored, with the right hand's shapedirs
    return {
        "smpl-pkl": write_official_pickle(smpl, folder / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"),
        "smpl-npz": write_npz(smpl, folder / "SMPL_NEUTRAL.npz"),
        "smpl-hmr": write_official_pickle(
            dict(smpl, cocoplus_regressor=smpl["J_regressor"][:19]), folder / "neutral_smpl_with_cocoplus_reg.pkl"
        ),
        "mano-right": write_official_pickle(mano, folder / "MANO_RIGHT.pkl", select_shapedirs=True),
        "mano-left": write_official_pickle(mano_left, folder / "MANO_LEFT.pkl", select_shapedirs=True),
        "mano-npz": write_npz(mano, folder / "MANO_RIGHT.npz"),
    }


BACKENDS = ["anny", "anny-hand-right", "anny-hand-left", "smpl-pkl", "smpl-npz", "mano-right", "mano-left"]


def _load(name, model_files):
    if name.startswith("anny"):
        return load_body_model(name)
    kind = "smpl" if name.startswith("smpl") else name
    return load_body_model(kind, model_files[name])


@pytest.fixture(params=BACKENDS)
def body(request, model_files):
    return _load(request.param, model_files)


def _random_params(body, batch=3, seed=0, angle=0.4):
    g = torch.Generator().manual_seed(seed)
    p = body.zero_params(batch)
    p.global_orient = angle * torch.randn(batch, 3, generator=g)
    p.joint_pose = angle * torch.randn(p.joint_pose.shape, generator=g)
    if body.shape_bounds:
        p.shape = torch.rand(p.shape.shape, generator=g)
    else:
        p.shape = torch.randn(p.shape.shape, generator=g)
    p.translation = torch.randn(batch, 3, generator=g)
    p.scale = 1 + 0.1 * torch.rand(batch, 1, generator=g)
    return p


def test_static_description_is_consistent(body):
    assert body.skinning_weights.shape == (body.vertex_count, body.joint_count)
    assert torch.allclose(body.skinning_weights.sum(1), torch.ones(body.vertex_count), atol=1e-5)
    assert body.faces.dtype == np.int64 and body.faces.shape[1] == 3 and body.faces.max() < body.vertex_count
    assert body.parents[0] == -1 and all(body.parents[j] < j for j in range(1, body.joint_count))
    assert len(body.joint_names) == len(set(body.joint_names)) == body.joint_count
    layout = body.parameter_layout()
    assert list(layout) == ["global_orient", "joint_pose", "shape", "translation", "scale"]
    assert layout["joint_pose"] == (body.joint_count - 1, 3) and layout["shape"] == (body.shape_size,)


def test_known_sizes():
    anny = load_body_model("anny")
    assert (anny.vertex_count, anny.joint_count, len(anny.faces), anny.shape_size) == (13718, 104, 27420, 6)
    hand = load_body_model("anny-hand")
    assert (hand.vertex_count, hand.joint_count) == (1609, 21)
    assert hand.joint_names[1] == "wrist.R"
    assert load_body_model("anny-hand-left").joint_names[1] == "wrist.L"


def test_zero_pose_gives_rest_mesh(body):
    p = body.zero_params(2)
    p.shape = _random_params(body, 2).shape
    out = body(p)
    assert torch.allclose(out.vertices, body.rest_vertices(p.shape), atol=1e-5)
    assert torch.allclose(out.joints, body.rest_joints(p.shape), atol=1e-5)
    assert torch.allclose(out.joint_rotations, torch.eye(3).expand_as(out.joint_rotations), atol=1e-6)


def test_rotating_one_joint_moves_only_its_vertices(body):
    joint = max(range(1, body.joint_count), key=lambda j: (0 < len(body.descendants(j)) < body.joint_count / 2, -j))
    subtree = body.descendants(joint)
    p = body.zero_params(1)
    rest = body(p).vertices[0]
    p.joint_pose[0, joint - 1] = torch.tensor([0.0, 0.0, 0.8])
    moved = (body(p).vertices[0] - rest).norm(dim=1) > 1e-6
    influenced = body.skinning_weights[:, subtree].sum(1) > 0
    assert moved.any()
    assert not (moved & ~influenced).any(), "a vertex with no weight on the rotated subtree moved"


def test_batch_equals_one_by_one(body):
    p = _random_params(body, 3)
    batched = body(p).vertices
    single = torch.cat([body(p.index(i)).vertices for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_gradients_reach_every_parameter(body):
    p = _random_params(body, 2)
    for name in ("global_orient", "joint_pose", "shape", "translation", "scale"):
        getattr(p, name).requires_grad_(True)
    body(p).vertices.square().sum().backward()
    for name in ("global_orient", "joint_pose", "shape", "translation", "scale"):
        grad = getattr(p, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_scale_and_translation_apply_last(body):
    p = _random_params(body, 1)
    base = body(p.with_(scale=torch.ones(1, 1), translation=torch.zeros(1, 3))).vertices
    assert torch.allclose(body(p).vertices, base * p.scale[:, None] + p.translation[:, None], atol=1e-5)


@pytest.mark.parametrize("variant", ["anny", "anny-hand-right", "anny-hand-left"])
def test_anny_backends_equal_anny(variant):
    body = load_body_model(variant)
    p = _random_params(body, 2).with_(translation=torch.zeros(2, 3), scale=torch.ones(2, 1))
    ours = body(p).vertices + body.origin_offset
    theirs = body.anny(pose_parameters=body.anny_world_poses(p), phenotype_kwargs=p.shape)["vertices"]
    assert (ours - theirs).abs().max() < 1e-5


def test_anny_hand_is_recentred():
    hand = load_body_model("anny-hand")
    rest = hand.rest_vertices(hand.default_shape()[None])[0]
    assert rest.mean(0).norm() < 1e-5 and 0.1 < (rest.max(0).values - rest.min(0).values).max() < 0.3


def test_anny_loads_fast_from_shipped_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNY_CACHE_DIR", str(tmp_path))  # an empty cache: nothing may be built
    from lvd_core.body.anny_model import AnnyBody

    AnnyBody("anny")
    assert not any(tmp_path.rglob("*.safetensors"))


# -- SMPL / MANO files ------------------------------------------------------------------------------------------


def test_every_official_format_loads_the_same(model_files):
    a = load_body_model("smpl", model_files["smpl-pkl"])
    b = load_body_model("smpl", model_files["smpl-npz"])
    c = load_body_model("smpl", model_files["smpl-hmr"])
    p = _random_params(a, 2)
    assert torch.allclose(a(p).vertices, b(p).vertices, atol=1e-5)
    assert torch.allclose(a(p).vertices, c(p).vertices, atol=1e-5)
    assert c.cocoplus_regressor.shape == (19, 6890)
    m1, m2 = load_body_model("mano", model_files["mano-right"]), load_body_model("mano", model_files["mano-npz"])
    q = _random_params(m1, 2)
    assert torch.allclose(m1(q).vertices, m2(q).vertices, atol=1e-6)


def test_mano_side_and_left_shapedirs_fix(model_files):
    left = load_body_model("mano", model_files["mano-left"])  # side from the official file name
    assert left.name == "mano-left"
    left_x = -make_model_arrays("mano")["v_template"][:, 0]
    # The buggy left file carried the right hand's shapedirs; after the fix beta0 scales the mirrored hand.
    assert np.allclose(left.layer.shapedirs[:, 0, 0].numpy(), 0.05 * (left_x - left_x.mean()), atol=1e-6)


def test_missing_file_names_where_to_get_it(tmp_path):
    with pytest.raises(BodyModelError, match="smpl.is.tue.mpg.de"):
        load_body_model("smpl", tmp_path / "nope.pkl")
    with pytest.raises(BodyModelError, match="mano.is.tue.mpg.de"):
        load_body_model("mano")


def test_wrong_kind_truncated_and_random_files_are_refused(model_files, tmp_path):
    with pytest.raises(BodyModelError, match="MANO"):
        SMPLFamilyBody(model_files["mano-right"], "smpl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(model_files["smpl-pkl"].read_bytes()[:5000])
    with pytest.raises(BodyModelError, match="truncated"):
        SMPLFamilyBody(truncated, "smpl")
    random_pickle = tmp_path / "random.pkl"
    random_pickle.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(BodyModelError):
        SMPLFamilyBody(random_pickle, "smpl")
    with pytest.raises(BodyModelError) as info:
        SMPLFamilyBody(truncated, "smpl")
    assert "\n" not in str(info.value)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned_by_pickle",))


def test_crafted_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / "SMPL_NEUTRAL.pkl"
    crafted.write_bytes(pickle.dumps({"v_template": _Exploit()}, protocol=2))
    with pytest.raises(BodyModelError, match="refused"):
        SMPLFamilyBody(crafted, "smpl")
    assert not (tmp_path / "pwned_by_pickle").exists()


def test_vertex_subset_equals_full_output(body):
    p = _random_params(body, 2)
    ids = torch.arange(0, body.vertex_count, 7)
    assert torch.allclose(body(p, vertex_ids=ids).vertices, body(p).vertices[:, ids], atol=1e-5)


@pytest.mark.parametrize("name", ["anny", "anny-hand-right"])
def test_closed_form_vertex_jacobian_equals_autograd_and_differences(name):
    body = load_body_model(name, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    params = body.zero_params(2)
    params.global_orient = torch.randn(2, 3, generator=g, dtype=torch.float64)
    params.joint_pose = 0.4 * torch.randn(params.joint_pose.shape, generator=g, dtype=torch.float64)
    params.shape = 0.3 + 0.4 * torch.rand(params.shape.shape, generator=g, dtype=torch.float64)
    params.scale = torch.tensor([[1.3], [0.8]], dtype=torch.float64)
    ids = torch.arange(0, body.vertex_count, 11)
    joints = torch.tensor([0, 1, body.joint_count // 2, body.joint_count - 1])
    probes = params.shape[:, None] + 0.01 * torch.randn(2, 3, body.shape_size, generator=g, dtype=torch.float64)
    row_weights = torch.rand(2, len(ids), generator=g, dtype=torch.float64)
    d_rotation, d_shape = body.vertex_jacobian(params, ids, joints, probes, row_weights)

    def posed(chosen):  # the axis-angles of `joints` (B, K, 3) -> vertices (B, N, 3)
        full_pose = params.full_pose.index_copy(1, joints, chosen)
        return body(params.with_(global_orient=full_pose[:, 0], joint_pose=full_pose[:, 1:]), vertex_ids=ids).vertices

    full = torch.autograd.functional.jacobian(posed, params.full_pose[:, joints], strategy="forward-mode", vectorize=True)
    expected = torch.stack([full[b, :, :, b] for b in range(2)]) * row_weights[..., None, None, None]  # (B, N, 3, K, 3)
    assert torch.allclose(d_rotation, expected, atol=1e-12)
    with torch.no_grad():
        base = body(params, vertex_ids=ids).vertices
        moved = torch.stack([body(params.with_(shape=probes[:, t]), vertex_ids=ids).vertices - base for t in range(3)], dim=-1)
    assert torch.allclose(d_shape, moved * row_weights[..., None, None], atol=1e-12)
