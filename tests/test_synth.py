"""Synthetic data: poses within limits and looking like their family, shapes, scans (clothing, holes, frames),
photos (centred person, mask = silhouette), reproducibility per (seed, index). Timings: benchmarks/bench_synth.py."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pykdtree.kdtree import KDTree
from scipy.ndimage import binary_dilation

from lvd_core.body import load_body_model
from lvd_core.synth import (
    BODY_FAMILIES,
    EXTRA_BODY_FAMILIES,
    HAND_FAMILIES,
    JOINT_LIMITS,
    BodySampling,
    ScanRealism,
    SyntheticScans,
    from_file_frame,
    held_out_set,
    joint_pose_to_angles,
    load_validation_set,
    make_scan,
    project,
    render_photo,
    sample_params,
    sample_pose,
    sample_shape,
    save_validation_set,
    to_file_frame,
    write_scan_file,
)
from lvd_core.synth.surface import body_surface, vertex_normals
from synthetic_models import make_model_arrays, write_npz


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def smpl(tmp_path_factory):
    return load_body_model("smpl", write_npz(make_model_arrays("smpl"), tmp_path_factory.mktemp("m") / "SMPL.npz"))


def _posed(body, joint_pose):
    params = body.zero_params(len(joint_pose)).with_(joint_pose=torch.from_numpy(joint_pose))
    with torch.no_grad():
        return body(params)


def _assert_within_limits(body, joint_pose):
    for (abstract, side), angles in joint_pose_to_angles(body, joint_pose).items():
        lo, hi = np.array(JOINT_LIMITS[abstract], dtype=np.float64).T
        assert (angles >= lo - 1e-3).all() and (angles <= hi + 1e-3).all(), (abstract, side)


# -- poses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", BODY_FAMILIES)
def test_body_poses_stay_within_joint_limits(anny, family):
    pose = sample_pose(anny, np.random.default_rng(0), 16, family)
    assert pose.shape == (16, anny.joint_count - 1, 3) and pose.dtype == np.float32
    _assert_within_limits(anny, pose)


def test_extra_body_families_put_the_limbs_where_they_say(anny):
    """Relative to the left hip joint (metres; Anny faces -Y, Z up, its left at +X)."""
    names = {n: j for j, n in enumerate(anny.joint_names)}
    where = {}
    for family in EXTRA_BODY_FAMILIES:
        pose = sample_pose(anny, np.random.default_rng(0), 8, family)
        _assert_within_limits(anny, pose)
        joints = _posed(anny, pose).joints.numpy()
        where[family] = {n: joints[:, names[n]] - joints[:, names["upperleg01.L"]] for n in
                         ("wrist.L", "wrist.R", "finger3-1.L", "lowerleg01.L", "lowerleg01.R")}  # fmt: skip
    for wrist in ("wrist.L", "wrist.R"):
        assert (where["arms_front"][wrist][:, 1] < -0.2).all()  # 20 cm or more ahead of the hips
        assert (where["arms_front"][wrist][:, 2] > 0.05).all()  # above them
        assert (np.abs(where["hands_on_hips"][wrist][:, 2] - 0.12) < 0.08).all()  # at the waist
        assert (np.abs(where["hands_in_pockets"][wrist][:, 2]) < 0.08).all()  # at the hips
    # In the pocket: the knuckles on the front of the thigh, not hanging beside it (x 0.19-0.21 standing).
    assert (np.abs(where["hands_in_pockets"]["finger3-1.L"][:, 0]) < 0.16).all()
    assert (where["hands_in_pockets"]["finger3-1.L"][:, 1] < -0.03).all()
    # One knee raised ahead of the hips, the other under them.
    knees_ahead = (np.stack([where["knee_raised"][k][:, 1] for k in ("lowerleg01.L", "lowerleg01.R")]) < -0.2).sum(0)
    assert (knees_ahead == 1).all()
    with pytest.raises(ValueError, match="unknown pose family"):
        sample_pose(anny, np.random.default_rng(0), 1, "juggling")


@pytest.mark.parametrize("name", ["anny-hand-right", "anny-hand-left"])
def test_hand_poses_stay_within_limits_and_fists_curl_towards_the_palm(name):
    hand = load_body_model(name)
    for family in HAND_FAMILIES:
        _assert_within_limits(hand, sample_pose(hand, np.random.default_rng(1), 8, family))
    tips = [j for j, n in enumerate(hand.joint_names) if n.startswith("finger") and n.split("-")[1][0] == "3"]
    wrist = hand.joint_names.index(next(n for n in hand.joint_names if n.startswith("wrist")))

    def reach(family):  # mean fingertip distance from the wrist
        joints = _posed(hand, sample_pose(hand, np.random.default_rng(2), 4, family)).joints
        return (joints[:, tips] - joints[:, wrist : wrist + 1]).norm(dim=-1).mean()

    assert reach("fist") < 0.75 * reach("open")


def test_families_look_like_their_names(anny):
    """Anny stands along +Z facing -Y: check the joints of a few families against that."""
    j = {n: i for i, n in enumerate(anny.joint_names)}

    def joints(family):
        return _posed(anny, sample_pose(anny, np.random.default_rng(3), 8, family)).joints.numpy()

    up = joints("arms_raised")
    assert (up[:, j["wrist.L"], 2] > up[:, j["head"], 2]).all() and (up[:, j["wrist.R"], 2] > up[:, j["head"], 2]).all()
    t = joints("t_pose")
    assert (np.abs(t[:, j["wrist.L"], 2] - t[:, j["upperarm01.L"], 2]) < 0.15).all() and (t[:, j["wrist.L"], 0] > 0.6).all()
    sit = joints("sitting")  # thighs forward (-Y), shins hanging down: knees bend backwards
    assert (sit[:, j["lowerleg01.L"], 1] < sit[:, j["upperleg01.L"], 1] - 0.2).all()
    assert (sit[:, j["foot.L"], 2] < sit[:, j["lowerleg01.L"], 2] - 0.25).all()
    walk = joints("walking")  # legs in opposition
    assert ((walk[:, j["foot.L"], 1] - walk[:, j["foot.R"], 1]) * (walk[:, j["wrist.L"], 1] - walk[:, j["wrist.R"], 1]) < 0).mean() > 0.7


def test_smpl_fallback_poses_and_scans(smpl):
    pose = sample_pose(smpl, np.random.default_rng(0), 8, "walking")
    _assert_within_limits(smpl, pose)
    params = sample_params(smpl, np.random.default_rng(1), 1)
    assert params.shape.abs().max() < 6  # betas ~ N(0, 1)
    scan = make_scan(smpl, params, np.random.default_rng(2))
    assert scan.points.shape[1] == 3 and scan.vertices_gt.shape == (smpl.vertex_count, 3)


def test_global_orient_is_a_limited_yaw_about_up(anny):
    params = sample_params(anny, np.random.default_rng(0), 64, BodySampling(yaw_range_deg=30, tilt_deg=0))
    rotvec = params.global_orient.numpy()
    assert np.allclose(rotvec[:, :2], 0, atol=1e-6) and np.abs(np.degrees(rotvec[:, 2])).max() <= 30 + 1e-4


# -- shapes -----------------------------------------------------------------------------------------------


def test_shapes_are_adult_phenotypes_and_reproducible(anny):
    shape = sample_shape(anny, np.random.default_rng(0), 32)
    assert shape.shape == (32, 6) and shape.dtype == np.float32 and shape.min() >= 0 and shape.max() <= 1
    assert shape[:, anny.shape_names.index("age")].min() > 0.5  # anny age 2/3 = young adult
    assert np.array_equal(shape, sample_shape(anny, np.random.default_rng(0), 32))
    children = sample_shape(anny, np.random.default_rng(0), 64, children=True)
    assert children[:, anny.shape_names.index("age")].min() < 0.5


# -- scans ------------------------------------------------------------------------------------------------


def test_scan_shapes_dtypes_and_reproducibility(anny):
    data = SyntheticScans("anny", seed=5)
    scan = data[7]
    assert scan.points.dtype == np.float32 and scan.points.ndim == 2 and scan.points.shape[1] == 3
    assert 3_000 < len(scan.points) < 11_000
    assert scan.vertices_gt.shape == (anny.vertex_count, 3) and scan.joints_gt.shape == (anny.joint_count, 3)
    other_order = SyntheticScans("anny", seed=5)
    other_order[130]  # touches another shape block first
    again = other_order[7]
    assert np.array_equal(scan.points, again.points) and np.array_equal(scan.vertices_gt, again.vertices_gt)
    assert not np.array_equal(scan.points[:100], data[8].points[:100])


def test_scans_record_their_pose_family():
    anywhere = {SyntheticScans("anny", seed=2)[i].info["pose_family"] for i in range(12)}
    assert anywhere <= set(BODY_FAMILIES) and len(anywhere) > 3
    chosen = SyntheticScans("anny-hand", seed=2, sampling=BodySampling(families=("fist", "open")))
    assert {chosen[i].info["pose_family"] for i in range(6)} == {"fist", "open"}


def test_iteration_split_across_workers_gives_the_same_samples():
    data = SyntheticScans("anny", seed=1, length=4)
    direct = [data[i].points for i in range(4)]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, collate_fn=lambda s: s)
    gathered = sorted((s.points for s in loader), key=lambda p: float(p[0, 0]))
    assert all(np.array_equal(a, b) for a, b in zip(sorted(direct, key=lambda p: float(p[0, 0])), gathered))


def _signed_distance_to_body(scan, body):
    """(N,) distance of each scan point to the nearest body vertex, signed by that vertex's normal."""
    normals = vertex_normals(scan.vertices_gt, body_surface(body))
    _, nearest = KDTree(scan.vertices_gt).query(scan.points, k=1)
    return ((scan.points - scan.vertices_gt[nearest]) * normals[nearest]).sum(1)


def test_tight_clothes_push_the_surface_outwards_by_centimetres(anny):
    params = sample_params(anny, np.random.default_rng(0), 1, BodySampling(families=("standing",)))
    clean = make_scan(anny, params, np.random.default_rng(1), realism=ScanRealism.clean())
    assert np.abs(_signed_distance_to_body(clean, anny)).mean() < 0.003
    dressed = replace(ScanRealism.clean(), tight_clothes_probability=1.0)
    for seed in range(3):
        distance = _signed_distance_to_body(make_scan(anny, params, np.random.default_rng(seed), realism=dressed), anny)
        assert 0.001 < distance.mean() < 0.05 and distance.max() < 0.05


def test_holes_and_missing_parts_remove_points(anny):
    params = sample_params(anny, np.random.default_rng(0), 1, BodySampling(families=("standing",)))
    clean = make_scan(anny, params, np.random.default_rng(1), realism=ScanRealism.clean())
    holed = replace(ScanRealism.clean(), hole_count=(3, 3), missing_soles_probability=1.0)
    scan = make_scan(anny, params, np.random.default_rng(1), realism=holed)
    assert len(scan.points) < len(clean.points) - 100
    lowest = scan.vertices_gt[:, 2].min()
    assert (clean.points[:, 2] < lowest + 0.005).sum() > 20 and (scan.points[:, 2] < lowest + 0.005).sum() < 5


def test_mesh_scans_keep_faces_and_point_clouds_have_none(anny):
    params = sample_params(anny, np.random.default_rng(0), 1)
    mesh_realism = replace(ScanRealism.clean(), mesh_probability=1.0)
    mesh = make_scan(anny, params, np.random.default_rng(0), realism=mesh_realism)
    assert mesh.faces is not None and mesh.faces.max() < len(mesh.points)
    assert make_scan(anny, params, np.random.default_rng(0)).faces is None


def test_hand_scans_with_objects_and_wrist_cuts():
    hand = load_body_model("anny-hand-right")
    params = sample_params(hand, np.random.default_rng(0), 1, BodySampling(families=("grasp_cylinder",)))
    realism = ScanRealism(object_in_hand_probability=1.0, wrist_cut_probability=1.0, hole_count=(0, 0))
    scan = make_scan(hand, params, np.random.default_rng(0), realism=realism)
    assert scan.info["object"] in ("cylinder", "ball") and "wrist_cut" in scan.info
    assert scan.points.shape[1] == 3 and len(scan.points) > 3_000


@pytest.mark.parametrize("units", ["m", "cm", "mm"])
@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_units_and_up_axis_round_trip(anny, units, up_axis):
    points = SyntheticScans("anny", seed=2)[0].points
    file_points = to_file_frame(points, "z", units=units, up_axis=up_axis)
    np.testing.assert_allclose(from_file_frame(file_points, "z", units=units, up_axis=up_axis), points, rtol=1e-6, atol=1e-7)
    tallest = np.ptp(file_points, axis=0).argmax()
    assert tallest == "xyz".index(up_axis)
    assert np.ptp(file_points, axis=0).max() == pytest.approx(np.ptp(points, axis=0).max() * {"m": 1, "cm": 100, "mm": 1000}[units], rel=1e-5)


def test_scan_files_read_back_into_the_model_frame(anny, tmp_path):
    import trimesh

    scan = SyntheticScans("anny", seed=3)[0]
    path = write_scan_file(scan, "z", tmp_path / "scan.ply", units="mm", up_axis="y")
    read = np.asarray(trimesh.load(path).vertices, dtype=np.float32)
    np.testing.assert_allclose(from_file_frame(read, "z", units="mm", up_axis="y"), scan.points, atol=1e-6)


def test_validation_set_regenerates_exactly(tmp_path):
    path = save_validation_set(held_out_set("anny", 3), tmp_path / "val.npz")
    dataset, params = load_validation_set(path)
    assert path.stat().st_size < 20_000
    scan = dataset[2]
    np.testing.assert_array_equal(scan.params.joint_pose.numpy(), params["joint_pose"][2:3])
    assert np.array_equal(scan.points, held_out_set("anny", 3)[2].points)


def test_demo_scan_is_a_clothed_body_in_cm_y_up():
    from lvd_core.synth.demo import make_demo_scan

    mesh, params = make_demo_scan(0)
    height_cm = np.ptp(mesh.vertices, axis=0)
    assert height_cm.argmax() == 1 and 140 < height_cm[1] < 210 and mesh.is_watertight
    assert params.shape.shape == (1, 6)
    json.dumps({k: v.tolist() for k, v in params.to_numpy().items()})


# -- photos -----------------------------------------------------------------------------------------------


def test_photo_person_is_centred_and_mask_is_the_projected_body(anny):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        photo = render_photo(anny, sample_params(anny, rng, 1), rng)
        assert photo.image.shape == (256, 256, 3) and photo.image.dtype == np.uint8
        assert photo.mask.shape == (256, 256) and photo.mask.dtype == np.float32
        rows, cols = np.nonzero(photo.mask)
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        assert max(box[2] - box[0], box[3] - box[1]) == pytest.approx(256 / 1.1, abs=2)
        assert np.abs((box[:2] + box[2:]) / 2 - 128).max() <= 1.5
        xy, depth = project(photo.camera, photo.vertices_gt)
        assert np.abs(np.r_[xy.min(0), xy.max(0)] - box).max() <= 1.5 and (depth > 0).all()
        # Every vertex projects onto the silhouette: outline vertices may fall in the pixel next to it.
        silhouette = binary_dilation(photo.mask > 0)
        assert silhouette[xy[:, 1].astype(int), xy[:, 0].astype(int)].mean() > 0.999
