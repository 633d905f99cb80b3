"""Scan loading, cleaning, bad-input errors and the normalised frame (lvd_core.inputs.scan / .frame)."""

import json

import numpy as np
import pytest
import torch
import trimesh
from pykdtree.kdtree import KDTree

from lvd_core.inputs.frame import NormalizedFrame, normalize
from lvd_core.inputs.scan import ScanError, load_scan

UNIT_PER_METRE = {"m": 1.0, "cm": 100.0, "mm": 1000.0}
Y_UP_FROM_Z_UP = np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # -90 deg about X: z -> y


def body_mesh_z_up() -> trimesh.Trimesh:
    """A 1.8 m tall, Z-up, asymmetric (so a wrong rotation or mirror shows) stand-in for a body scan, in metres."""
    body = trimesh.creation.capsule(height=1.4, radius=0.2, count=[16, 16])  # along z, 1.8 tall
    body.apply_translation([0.3, -0.1, 0.9])
    x, y, z = body.vertices.T.copy()
    body.vertices = np.stack([x + 0.1 * z**2, y - 0.05 * z, z], axis=1)  # bend forward, lean sideways
    return body


def to_file_frame(vertices_m_z_up: np.ndarray, units: str, up: str) -> np.ndarray:
    vertices = vertices_m_z_up @ Y_UP_FROM_Z_UP.T if up == "y" else vertices_m_z_up
    return vertices * UNIT_PER_METRE[units]


def assert_same_point_sets(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    """Every point of a has a point of b within tol and vice versa (vertex order may change on load)."""
    assert KDTree(b).query(a, k=1)[0].max() < tol
    assert KDTree(a).query(b, k=1)[0].max() < tol


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(ScanError) as error:
        load_scan(source, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- formats, units, axes


@pytest.mark.parametrize("extension", ["obj", "ply", "stl", "off", "glb", "gltf"])
def test_every_format_round_trips(tmp_path, extension):
    mesh = body_mesh_z_up()
    exported = mesh.export(file_type=extension)
    files = exported if isinstance(exported, dict) else {f"model.{extension}": exported}  # glTF: model.gltf + .bin
    for name, data in files.items():
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    scan = load_scan(tmp_path / f"model.{extension}", up="z")
    assert scan.units == "m" and scan.faces is not None
    assert_same_point_sets(scan.vertices, mesh.vertices, 1e-5)


def test_point_cloud_ply_loads_its_vertices(tmp_path):
    points = trimesh.sample.sample_surface(body_mesh_z_up(), 5000, seed=1)[0]
    trimesh.PointCloud(points).export(tmp_path / "cloud.ply")
    scan = load_scan(tmp_path / "cloud.ply")
    assert scan.faces is None and scan.points.shape == (5000, 3) and scan.up == "z"


def test_gltf_scene_with_several_meshes_is_concatenated_with_transforms(tmp_path):
    mesh = body_mesh_z_up()
    scene = trimesh.Scene()
    left = np.eye(4)
    left[:3, 3] = [-0.5, 0, 0]
    scene.add_geometry(mesh, node_name="left", transform=left)
    scene.add_geometry(mesh, node_name="right")
    (tmp_path / "scene.glb").write_bytes(scene.export(file_type="glb"))
    scan = load_scan(tmp_path / "scene.glb", up="z")
    assert len(scan.faces) == 2 * len(mesh.faces)
    assert_same_point_sets(scan.vertices, np.concatenate([mesh.vertices - [0.5, 0, 0], mesh.vertices]), 1e-5)


@pytest.mark.parametrize("units", ["m", "cm", "mm"])
@pytest.mark.parametrize("up", ["y", "z"])
def test_units_and_up_are_detected_and_normalised_away(tmp_path, units, up):
    mesh = body_mesh_z_up()
    trimesh.Trimesh(to_file_frame(mesh.vertices, units, up), mesh.faces).export(tmp_path / "scan.ply")
    scan = load_scan(tmp_path / "scan.ply")
    assert (scan.units, scan.up) == (units, up)
    centred = mesh.vertices - (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    metric = normalize(scan, up_out="z", height=None)
    assert_same_point_sets(metric.to_canonical(scan.vertices), centred, 1e-6)
    assert metric.metres_per_canonical == pytest.approx(1.0)
    unit_height = normalize(scan, up_out="z", height=1.0)
    assert_same_point_sets(unit_height.to_canonical(scan.vertices), centred / 1.8, 1e-6)
    assert unit_height.length_to_input(1.0) == pytest.approx(1.8 * UNIT_PER_METRE[units])


def test_array_source_and_overrides():
    mesh = body_mesh_z_up()
    scan = load_scan((mesh.vertices * 1000, mesh.faces), units="mm", up="y")  # detected: mm, z (y: 0.47 m of depth)
    assert (scan.units, scan.up, scan.source) == ("mm", "y", "arrays")


@pytest.mark.parametrize("units", ["m", "mm"])
def test_given_units_that_make_no_person_are_refused(units):
    """A centimetre scan read in metres would be fitted as a 170 m giant (a 42 m residual, and exit 0)."""
    mesh = body_mesh_z_up()
    height = np.ptp(mesh.vertices[:, 2]) * 100
    with pytest.raises(ScanError, match=rf"arrays is {height:.4g} {units} tall, no body's size .*it is in cm\? pass --units cm"):
        load_scan((mesh.vertices * 100, mesh.faces), units=units)


@pytest.mark.parametrize("distance", [3.0, 1e30])
def test_a_stray_vertex_changes_neither_units_nor_up(distance):
    """One vertex metres away (or at 1e30) joined to the mesh: the raw bounding box would turn a standing
    Z-up body in metres into a lying one, or a unitless giant."""
    mesh = body_mesh_z_up()
    stray = mesh.vertices[np.argmax(mesh.vertices[:, 1])] + [0.0, distance, 0.0]
    vertices = np.vstack([mesh.vertices, stray])
    faces = np.vstack([mesh.faces, [[len(mesh.vertices), 0, 1]]])
    scan = load_scan((vertices, faces))
    assert (scan.units, scan.up, scan.cleaning["stray_vertices"]) == ("m", "z", 1)
    assert np.ptp(scan.vertices, axis=0).max() < 2.5 and len(scan.faces) == len(mesh.faces)


# ---------------------------------------------------------------- the frame


def test_frame_inverse_is_exact_and_serialisable():
    mesh = body_mesh_z_up()
    scan = load_scan((to_file_frame(mesh.vertices, "cm", "y"), mesh.faces))
    frame = normalize(scan, up_out="z", height=1.0)
    x = np.random.default_rng(0).normal(scale=100, size=(1000, 3))
    assert np.abs(frame.to_input(frame.to_canonical(x)) - x).max() < 1e-9
    x_torch = torch.from_numpy(x)
    assert torch.allclose(frame.to_input(frame.to_canonical(x_torch)), x_torch, atol=1e-9, rtol=0)
    restored = NormalizedFrame.from_dict(json.loads(json.dumps(frame.to_dict())))
    assert np.array_equal(restored.to_canonical(x), frame.to_canonical(x))


def test_y_up_to_z_up_is_a_right_handed_quarter_turn_about_x():
    mesh = body_mesh_z_up()
    frame = normalize(load_scan((to_file_frame(mesh.vertices, "m", "y"), mesh.faces)), up_out="z", center=None)
    assert np.allclose(frame.rotation @ [0, 1, 0], [0, 0, 1]) and np.isclose(np.linalg.det(frame.rotation), 1)
    assert np.allclose(frame.rotation @ [1, 0, 0], [1, 0, 0])


def test_paper_frame_is_y_up_height_1_5_centred():
    mesh = body_mesh_z_up()
    scan = load_scan((mesh.vertices, mesh.faces))
    canonical = normalize(scan, up_out="y", height=1.5).to_canonical(scan.vertices)
    assert np.ptp(canonical, axis=0)[1] == pytest.approx(1.5)
    assert np.allclose(canonical.min(0) + canonical.max(0), 0)


def test_unitless_scan_cannot_be_kept_metric():
    mesh = body_mesh_z_up()
    scan = load_scan((mesh.vertices * 10, mesh.faces))
    assert scan.units == "unitless"
    with pytest.raises(ScanError):
        normalize(scan, height=None)


# ---------------------------------------------------------------- cleaning and size


def test_fragments_are_dropped_and_duplicates_merged():
    mesh = body_mesh_z_up()
    debris = trimesh.creation.icosphere(subdivisions=1, radius=0.01)
    debris.apply_translation([1.0, 1.0, 1.0])
    soup = trimesh.util.concatenate([mesh, debris])
    split = soup.vertices[soup.faces.ravel()]  # every face with its own vertices, as in a triangle soup
    scan = load_scan((split, np.arange(len(split)).reshape(-1, 3)))
    assert scan.cleaning["fragments"] == 1 and scan.cleaning["duplicate_vertices"] > 0
    assert_same_point_sets(scan.vertices, mesh.vertices, 1e-12)


def test_point_cloud_fragments_are_dropped():
    points = trimesh.sample.sample_surface(body_mesh_z_up(), 20000, seed=0)[0]
    debris = np.random.default_rng(0).normal(scale=0.005, size=(30, 3)) + [1.0, 1.0, 1.0]
    scan = load_scan((np.concatenate([points, debris]), None))
    assert scan.cleaning["fragments"] >= 1 and len(scan.vertices) == 20000


def test_partial_open_scan_loads():
    mesh = body_mesh_z_up()
    front = mesh.faces[mesh.triangles_center[:, 1] < -0.1]  # the front half only: open, not watertight
    scan = load_scan((mesh.vertices, front))
    assert scan.units == "m" and scan.up == "z"


def test_million_face_scan_has_bounded_points():
    # A 1.8 m cylinder tessellated into 1 M triangles (built directly: fast).
    rows, columns = 708, 708
    angle, z = np.meshgrid(np.linspace(0, 2 * np.pi, columns, endpoint=False), np.linspace(0, 1.8, rows), indexing="ij")
    vertices = np.stack([0.2 * np.cos(angle), 0.2 * np.sin(angle), z], axis=-1).reshape(-1, 3)
    index = np.arange(columns * rows).reshape(columns, rows)
    a, b = index[:, :-1], index[:, 1:]
    c, d = np.roll(a, -1, axis=0), np.roll(b, -1, axis=0)
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    assert len(faces) > 1_000_000
    scan = load_scan((vertices, faces), max_points=50_000)
    assert scan.points.shape == (50_000, 3) and scan.points.dtype == np.float32
    assert (scan.units, scan.up) == ("m", "z")


# ---------------------------------------------------------------- bad input


def test_bad_files_give_one_line_errors(tmp_path):
    assert "not found" in one_line_error(tmp_path / "missing.obj")
    (tmp_path / "empty.obj").write_bytes(b"")
    assert "empty" in one_line_error(tmp_path / "empty.obj")
    (tmp_path / "notes.obj").write_text("shopping list\neggs\nmilk\n")
    assert "no vertices" in one_line_error(tmp_path / "notes.obj")
    (tmp_path / "scan.xyz").write_text("1 2 3\n")
    assert "unsupported" in one_line_error(tmp_path / "scan.xyz")
    (tmp_path / "broken.ply").write_text("garbage")
    assert "cannot read" in one_line_error(tmp_path / "broken.ply")
    (tmp_path / "bad_faces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    assert one_line_error(tmp_path / "bad_faces.obj")


def test_bad_arrays_give_one_line_errors():
    mesh = body_mesh_z_up()
    assert "index vertex" in one_line_error((mesh.vertices, mesh.faces + len(mesh.vertices)))
    assert "(N, 3)" in one_line_error((mesh.vertices[:, :2], None))
    mostly_nan = mesh.vertices.copy()
    mostly_nan[: int(0.8 * len(mostly_nan))] = np.nan
    assert "NaN" in one_line_error((mostly_nan, mesh.faces))
    assert "at least" in one_line_error((mesh.vertices[:50], None))
    flat = mesh.vertices.copy()
    flat[:, 0] = 0.0
    assert "degenerate" in one_line_error((flat, None))
    assert "kind" in one_line_error((mesh.vertices, mesh.faces), kind="cat")


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".off"])
def test_an_all_nan_file_reports_every_vertex(tmp_path, suffix):
    """The message counts every vertex of the file (it once said 190 of 17,204 for an all-NaN scan)."""
    mesh = body_mesh_z_up()
    path = tmp_path / f"nan{suffix}"
    trimesh.Trimesh(np.full_like(mesh.vertices, np.nan), mesh.faces, process=False).export(path)
    count = len(mesh.vertices)
    assert f"{count} of {count} vertices of {path} are NaN" in one_line_error(path)


def test_a_few_nan_vertices_are_dropped():
    mesh = body_mesh_z_up()
    vertices = mesh.vertices.copy()
    vertices[:3] = np.inf
    scan = load_scan((vertices, mesh.faces))
    assert scan.cleaning["nonfinite_vertices"] == 3 and np.isfinite(scan.vertices).all()


# ---------------------------------------------------------------- real samples


def test_real_body_scan_is_cm_y_up_187_cm(shared_data):
    scan = load_scan(shared_data / "scans" / "rp_dennis_posed_004_30k.obj")
    assert (scan.units, scan.up) == ("cm", "y")
    metric = normalize(scan, up_out="z", height=None).to_canonical(scan.vertices)
    assert np.ptp(metric[:, 2]) == pytest.approx(1.87, abs=0.01)
    assert len(scan.vertices) == 15022  # UV seams merged


@pytest.mark.parametrize("index", [0, 1, 2])
def test_real_hand_scans_load_unitless(shared_data, index):
    scan = load_scan(shared_data / "hands" / f"sample_{index}.obj", kind="hand")
    assert scan.units == "unitless" and scan.kind == "hand"
    canonical = normalize(scan, up_out="y", height=1.0).to_canonical(scan.vertices)
    assert np.ptp(canonical, axis=0).max() == pytest.approx(1.0, abs=1e-3)


def test_mesh_of_only_degenerate_faces_becomes_a_point_cloud():
    mesh = body_mesh_z_up()
    collapsed = np.stack([np.arange(len(mesh.vertices))] * 3, axis=1)
    scan = load_scan((mesh.vertices, collapsed))
    assert scan.faces is None and len(scan.points) == len(mesh.vertices)
