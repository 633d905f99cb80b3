"""SMPL, SMPL-X and MANO from a fitted Anny body (lvd_core.transfer) on Anny-built stand-in model files."""

import numpy as np
import pytest
import torch

from lvd_core.body import load_body_model
from lvd_core.body.smplx_model import SMPLX_JOINT_NAMES, CorrectiveLBSBody
from lvd_core.synth import sample_pose, sample_shape
from lvd_core.synth.standins import FILE_NAMES, LAYOUTS, standin_arrays, write_standin
from lvd_core.transfer import JOINT_MAPS, LOOSE_JOINTS, frame_rotation, surface_distance, transfer_fit, transfer_result
from synthetic_models import write_official_pickle


@pytest.fixture(scope="session")
def standin_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standins")
    return {kind: write_standin(kind, folder) for kind in FILE_NAMES}


def _posed_anny(source, seed, family):
    rng = np.random.default_rng(seed)
    params = source.zero_params(1)
    params.shape = torch.as_tensor(sample_shape(source, rng, 1))
    params.joint_pose = torch.as_tensor(sample_pose(source, rng, 1, family=family))
    params.global_orient = torch.tensor([[0.1, 0.4, -0.2]])
    params.translation = torch.tensor([[0.2, -0.1, 0.05]])
    return params


@pytest.mark.parametrize("kind", list(FILE_NAMES))
@pytest.mark.slow
def test_standins_load_as_their_model(kind, standin_files):
    body = load_body_model(kind, standin_files[kind])
    vertex_count, names, parents, _ = LAYOUTS[kind]
    assert (body.vertex_count, body.joint_names, list(body.parents)) == (vertex_count, list(names), parents)
    assert torch.allclose(body.skinning_weights.sum(1), torch.ones(vertex_count), atol=1e-5)
    rest = body(body.zero_params(1)).vertices[0]
    # Human-sized: a body 1.4-2.1 m tall (Y-up), a hand 15-25 cm long; faces over every vertex.
    extent = (rest.max(0).values - rest.min(0).values).numpy()
    assert 1.4 < extent[1] < 2.1 if kind.startswith("smpl") else 0.15 < extent.max() < 0.25
    assert set(np.unique(body.faces)) == set(range(vertex_count))


@pytest.mark.slow
def test_standin_smpl_reads_as_official_pickle(tmp_path):
    """The same arrays as the official chumpy-era .pkl give the same model as the .npz."""
    arrays = standin_arrays("smpl")
    pkl = load_body_model("smpl", write_official_pickle(arrays, tmp_path / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"))
    npz = load_body_model("smpl", write_standin("smpl", tmp_path))
    params = npz.zero_params(1).with_(shape=torch.randn(1, 10), joint_pose=0.3 * torch.randn(1, 23, 3))
    assert torch.allclose(pkl(params).vertices, npz(params).vertices, atol=1e-6)


@pytest.mark.slow
def test_smplx_matches_the_smplx_package(tmp_path):
    """Our SMPL-X evaluation (with pose correctives) equals smplx's SMPLXLayer on the same file."""
    smplx = pytest.importorskip("smplx")
    arrays = standin_arrays("smplx")
    arrays["posedirs"] = 1e-3 * np.random.default_rng(0).normal(size=arrays["posedirs"].shape)
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **arrays)
    ours = load_body_model("smplx", path)
    theirs = smplx.SMPLXLayer(str(path), num_betas=10, use_pca=False, flat_hand_mean=True)
    g = torch.Generator().manual_seed(0)
    params = ours.zero_params(2).with_(shape=torch.randn(2, 10, generator=g), joint_pose=0.3 * torch.randn(2, 54, 3, generator=g))
    from lvd_core.body.base import axis_angle_to_matrix

    local = axis_angle_to_matrix(params.full_pose)
    expected = theirs(betas=params.shape, global_orient=local[:, :1], body_pose=local[:, 1:22], jaw_pose=local[:, 22:23],
                      leye_pose=local[:, 23:24], reye_pose=local[:, 24:25], left_hand_pose=local[:, 25:40],
                      right_hand_pose=local[:, 40:55])  # fmt: skip
    assert torch.allclose(ours(params).vertices, expected.vertices, atol=1e-5)
    assert torch.allclose(ours(params).joints, expected.joints[:, :55], atol=1e-5)
    ids = torch.tensor([5, 900, 10000])
    assert torch.allclose(ours(params, vertex_ids=ids).vertices, expected.vertices[:, ids], atol=1e-5)
    assert ours.joint_names == SMPLX_JOINT_NAMES and len(ours.joint_names) == 55


def test_corrective_twin_equals_the_smplx_backed_model(standin_files, tmp_path):
    arrays = standin_arrays("mano-right")
    arrays["posedirs"] = 1e-3 * np.random.default_rng(1).normal(size=arrays["posedirs"].shape)
    np.savez(tmp_path / "MANO_RIGHT.npz", **arrays)
    body = load_body_model("mano-right", tmp_path / "MANO_RIGHT.npz")
    twin = CorrectiveLBSBody.twin_of(body)
    params = body.zero_params(2).with_(shape=torch.randn(2, 10), joint_pose=0.4 * torch.randn(2, 15, 3))
    assert torch.allclose(twin(params).vertices, body(params).vertices, atol=1e-6)
    assert torch.allclose(twin(params).joints, body(params).joints, atol=1e-6)


@pytest.mark.parametrize("kind", list(JOINT_MAPS))
def test_joint_maps_name_real_joints(kind, standin_files):
    """Every mapped name is a joint of the target and a bone of its Anny source; sides agree."""
    target = load_body_model(kind, standin_files[kind])
    source = load_body_model("anny" if kind.startswith("smpl") else f"anny-hand-{kind.split('-')[1]}")
    for joint, bone in JOINT_MAPS[kind].items():
        assert joint in target.joint_names and bone in source.joint_names
        assert not (joint.startswith("left_") and bone.endswith(".R")) and not (joint.startswith("right_") and bone.endswith(".L"))
    assert LOOSE_JOINTS.isdisjoint({"pelvis", "left_knee", "right_elbow", "wrist"})


def test_joint_regressor_follows_the_shapes():
    """The stand-in's joint regressor (rows summing to 1 over nearby vertices) reproduces joints that move with
    the mesh over the shape samples."""
    from lvd_core.synth.standins import _fit_regressor

    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 3))
    samples = base + 0.05 * rng.normal(size=(30, 1, 3)) * base  # 30 shapes: per-axis stretches of one cloud
    truth = samples[:, [3, 50, 120]].mean(1, keepdims=True) + 0.2 * (samples[:, [7]] - samples[:, [9]])  # (30, 1, 3)
    regressor = _fit_regressor(samples, truth, neighbours=48)
    assert np.allclose(regressor.sum(1), 1.0)
    assert np.abs(np.einsum("jv,svc->sjc", regressor, samples) - truth).max() < 0.02


@pytest.mark.parametrize("kind, family", [("smpl", "walking"), ("smplx", "sitting")])
def test_posed_shaped_anny_transfers_to_body_standin(kind, family, standin_files):
    """A pipeline result of an Anny fit (scan in cm, Y-up) becomes the target's, in the same input frame."""
    from lvd_core.inputs.frame import QUARTER_TURNS
    from lvd_core.inputs.frame import apply_transform
    from lvd_core.results import FitResult

    source = load_body_model("anny")
    target = load_body_model(kind, standin_files[kind])
    params = _posed_anny(source, 3, family)
    input_from_model = np.eye(4)
    input_from_model[:3, :3] = 100 * QUARTER_TURNS[("z", "y")]
    input_from_model[:3, 3] = [5.0, 90.0, -3.0]
    with torch.no_grad():
        truth = apply_transform(input_from_model, source(params).vertices[0].double().numpy())
    anny_fit = FitResult("anny", params, input_from_model, truth, truth[:10], np.arange(10), 4.0, "cm", {"fit": 1.0})
    result, report = transfer_result(anny_fit, target)
    distance_mm = 10 * surface_distance(truth, result.vertices_input, target.faces)
    assert distance_mm.mean() < 10 and np.percentile(distance_mm, 90) < 25, (distance_mm.mean(), report)
    assert report.joint_mm < 25 and set(result.timings) == {"fit", "transfer"}
    assert result.body_name == kind and result.params.shape.abs().max() < 4  # betas ~ N(0, 1)
    with torch.no_grad():  # the result's own parameters and frame give its mesh
        assert np.allclose(apply_transform(result.input_from_model, target(result.params).vertices[0].double().numpy()),
                           result.vertices_input, atol=1e-3)  # fmt: skip


@pytest.mark.parametrize("side", ["right", "left"])
def test_anny_hand_transfers_to_mano_standin(side, standin_files):
    source = load_body_model(f"anny-hand-{side}")
    target = load_body_model(f"mano-{side}", standin_files[f"mano-{side}"])
    params = _posed_anny(source, 5, "grasp_cylinder").with_(scale=torch.tensor([[1.3]]))  # a unitless hand scan's fit
    _, vertices, report = transfer_fit(source, params, target)
    with torch.no_grad():
        truth = source(params).vertices[0].numpy() @ frame_rotation(source, target).T
    distance_mm = 1000 * surface_distance(truth, vertices[0].numpy(), target.faces) / 1.3
    assert distance_mm.mean() < 5, (distance_mm.mean(), report)  # MANO has no metacarpal joints: Anny's bend its palm
    assert report.matched_joints == target.joint_names  # MANO: all 16 joints matched by name


def test_transfer_refuses_a_fit_of_the_other_hand(standin_files):
    target = load_body_model("mano-left", standin_files["mano-left"])
    source = load_body_model("anny-hand-right")
    with pytest.raises(ValueError, match="from an anny-hand-left fit"):
        transfer_fit(source, source.zero_params(1), target)


def test_smplx_file_problems_are_one_line_messages(standin_files, tmp_path):
    from lvd_core.body import BodyModelError

    with pytest.raises(BodyModelError, match="SMPL-X is licensed .*smpl-x.is.tue.mpg.de"):
        load_body_model("smplx")
    with pytest.raises(BodyModelError, match="6890 vertices, an SMPL-X model has 10475; .*choose the smpl body model"):
        load_body_model("smplx", standin_files["smpl"])
    with pytest.raises(BodyModelError, match="SMPL-X model file not found"):
        load_body_model("smplx", tmp_path / "SMPLX_NEUTRAL.npz")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["smplx", "mano-left"])
def test_lvd_fit_without_weights_fits_the_users_model_through_anny(kind, standin_files, tmp_path):
    """`lvd fit --body smplx|mano --model-file F` with no network of its own: Anny's fit, transferred."""
    import json

    from lvd_core.cli import SAMPLE_SCAN, main

    if kind == "smplx":
        source, body_option = SAMPLE_SCAN, "smplx"
    else:  # a left Anny hand written as a scan: "mano" takes its side from the file name
        hand = load_body_model("anny-hand-left")
        source = tmp_path / "hand.ply"
        import trimesh

        trimesh.Trimesh(hand(hand.zero_params(1)).vertices[0].numpy(), hand.faces).export(source)
        body_option = "mano"
    out = tmp_path / "out"
    code = main(["fit", str(source), "--body", body_option, "--model-file", str(standin_files[kind]), "--out", str(out),
                 "--no-export", "--no-preview"])  # fmt: skip
    assert code == 0
    record = json.loads((out / f"{source.stem}.json").read_text())
    target = load_body_model(kind, standin_files[kind])
    assert record["body_model"] == target.name and list(record["joint_pose"]) == target.joint_names[1:]
    assert "transfer" in record["timings"]
    fitted = np.load(out / f"{source.stem}.npz")["vertices_input"]
    assert fitted.shape == (target.vertex_count, 3)
    # On the scan: the transferred body's vertices lie within a few percent of its size from the scan's surface.
    import trimesh
    from scipy.spatial import cKDTree

    scan_points = np.asarray(trimesh.load(source, process=False).vertices)
    size = np.ptp(scan_points, axis=0).max()
    assert cKDTree(scan_points).query(fitted)[0].mean() < 0.03 * size
