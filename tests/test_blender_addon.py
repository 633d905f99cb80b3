"""The extension in headless Blender: registration, panel, Fit / Batch fit / Export operators, the modal job,
and every bad input leaving the scene exactly as it was.

The add-on is registered the way Blender loads it (an extension repository, `bl_ext.<repo>.lvd_fit`, with
lvd_core vendored), from a symlinked staging folder. The fit pipeline is a test double (FakePipeline) that
returns known parameters, so what is checked is the Blender side: inputs in, characters out."""

import blender_support  # noqa: F401  (first: sets Blender's user folder before bpy is imported)

import importlib
import threading
from types import SimpleNamespace
from unittest import mock

import bpy
from mathutils import Vector
import numpy as np
import pytest
import torch

import build
from lvd_blender.export import export_characters
from lvd_core.body import load_body_model
from lvd_core.inputs.image import CropTransform
from lvd_core.inputs.scan import METRES_PER_UNIT, detect_units
from lvd_core.photo import photo_from_model
from synthetic_models import make_model_arrays, write_official_pickle
from test_blender_character import random_params

PACKAGE = "bl_ext.lvd_test.lvd_fit"


class FakePipeline:
    """Test double of lvd_core.pipeline: fits nothing, returns known Anny-hand parameters placed at the scan's
    centroid, in the units the real pipeline would read. Refuses flat or tiny inputs like the real one
    (ValueError); `oom_on_gpu` mimics CUDA OOM. Records what it was asked (bodies, units, masks, torch threads)."""

    def __init__(self, oom_on_gpu=False, block_after=None):
        self.oom_on_gpu = oom_on_gpu
        self.block_after = block_after  # number of fits after which it waits for cancel
        self.devices = []
        self.calls = 0
        self.batches = []  # the sizes of fit_scans' batches
        self.bodies, self.units, self.masks, self.threads = [], [], [], []
        self.doubtful = False  # whether the results say the network misread the pose
        self.residual_mm = 2.5  # the results' median scan-to-body distance

    def result(self, centre, metres_per_unit=1.0, units="m"):
        body = load_body_model("anny-hand")
        params = random_params(body, seed=self.calls)
        input_from_model = np.diag([1.0 / metres_per_unit] * 3 + [1.0])
        input_from_model[:3, 3] = centre
        vertices = body(params).vertices[0].double().numpy() / metres_per_unit + centre
        return SimpleNamespace(body_name="anny-hand-right", params=params, input_from_model=input_from_model,
                               vertices_input=vertices, residual_mm=self.residual_mm, timings={"total": 0.1}, doubtful=self.doubtful,
                               units=units, quality_label=lambda short=False: "2.5 mm" + (", check" if self.doubtful else ""))  # fmt: skip

    def fit_scans(self, sources, *, body, device, progress, cancel, units=None, up=None, **options):
        self.batches.append(len(sources))
        self.bodies.append(body)
        self.units.append(units)
        self.threads.append(torch.get_num_threads())
        self.devices.append(device)
        if self.oom_on_gpu and device != "cpu":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        results = []
        for vertices, faces, name in sources:
            if self.block_after is not None and self.calls >= self.block_after:
                cancel.wait(10)
                raise RuntimeError("cancelled")
            self.calls += 1
            if len(vertices) < 4 or np.linalg.matrix_rank(vertices - vertices.mean(0)) < 3:
                results.append(ValueError(f"{name} is degenerate (flat or fewer than 4 vertices)"))
                continue
            progress(0.5, "descending")
            read = units or detect_units(vertices, "z", "hand")
            results.append(self.result(vertices.mean(0), METRES_PER_UNIT.get(read, 1.0), read))
        return results

    def fit_photo(self, image_rgb, mask=None, *, body, device, progress, cancel, **options):
        self.masks.append(mask)
        if image_rgb.max() == 0:
            raise ValueError("no person found in the photo")
        result = self.result(np.zeros(3))
        hand = load_body_model("anny-hand")
        result.input_from_model = photo_from_model(hand)
        result.vertices_input = hand(result.params).vertices[0].double().numpy() @ result.input_from_model[:3, :3].T
        result.crop = SimpleNamespace(transform=CropTransform(origin_x=-3.0, origin_y=5.0, scale=0.5, size=256))
        return result


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The extension enabled from a staged repository; yields its submodules."""
    repo_dir = tmp_path_factory.mktemp("repo")
    build.stage(repo_dir / "lvd_fit", link=True)
    repo = bpy.context.preferences.extensions.repos.new(
        name="LVD test", module="lvd_test", custom_directory=str(repo_dir), source="USER"
    )
    bpy.ops.preferences.addon_enable(module=PACKAGE)
    yield SimpleNamespace(**{name: importlib.import_module(f"{PACKAGE}.{name}")
                             for name in ("fitting", "fit_work", "worker", "operators", "panel", "preferences", "properties",
                                          "jobs", "core")})  # fmt: skip
    bpy.ops.preferences.addon_disable(module=PACKAGE)
    bpy.context.preferences.extensions.repos.remove(repo)


@pytest.fixture
def pipeline(addon, monkeypatch):
    """The fake pipeline, fitting in this process on a thread (the fitting process runs the same jobs.Job)."""
    fake = FakePipeline()
    monkeypatch.setattr(addon.fit_work, "pipeline", lambda: fake)
    monkeypatch.setattr(addon.fitting, "fit_job", addon.fit_work.fit_job)
    blender_support.reset_scene()
    bpy.context.scene.lvd.body_model = "ANNY_HAND"
    return fake


def prefs():
    return bpy.context.preferences.addons[PACKAGE].preferences


def scan_object(name, vertices, faces=()):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in vertices], [], [tuple(f) for f in faces])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def hand_scan(name, offset=(0.0, 0.0, 0.0)):
    body = load_body_model("anny-hand")
    return scan_object(name, body.rest_vertices(body.default_shape()[None])[0].numpy() + offset, body.faces)


def activate(*objects):
    bpy.context.view_layer.update()  # objects linked since the last update are not in the view layer yet
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in objects)
    bpy.context.view_layer.objects.active = objects[0] if objects else None


def characters():
    return [obj for obj in bpy.data.objects if obj.type == "ARMATURE"]


# -- registration and UI ----------------------------------------------------------------------------------
def test_register_and_unregister_twice(addon):
    for _ in range(2):
        bpy.ops.preferences.addon_disable(module=PACKAGE)
        assert not hasattr(bpy.types.Scene, "lvd") and not hasattr(bpy.types, "LVD_PT_main")
        bpy.ops.preferences.addon_enable(module=PACKAGE)
        assert hasattr(bpy.types.Scene, "lvd") and hasattr(bpy.ops.lvd, "fit") and hasattr(bpy.ops.lvd, "export")


def test_lvd_core_is_the_vendored_copy(addon):
    fits = importlib.import_module(f"{PACKAGE}.fit_work").pipeline()
    assert fits.fit_scans.__module__ == f"{PACKAGE}.vendor.lvd_core.pipeline"
    assert fits.fit_photo.__module__ == f"{PACKAGE}.vendor.lvd_core.photo"


def test_panel_draws_progress_and_greys_licensed_models(addon):
    blender_support.reset_scene()
    wm = bpy.context.window_manager
    wm.lvd_progress.running, wm.lvd_progress.factor = True, 0.4
    layout = mock.MagicMock()
    try:
        bpy.types.LVD_PT_main.draw(mock.Mock(layout=layout), bpy.context)
    finally:
        wm.lvd_progress.running = False
    calls = [c[0] for c in layout.mock_calls]
    assert "progress" in calls and calls.count("grid_flow().row().prop_enum") == 6
    operators = [c.args[0] for c in layout.mock_calls if c[0].endswith("operator")]
    assert {"lvd.fit", "lvd.export"} <= set(operators)
    labels = " ".join(c.kwargs.get("text", "") for c in layout.mock_calls if c[0].endswith("label"))
    assert "SMPL needs its model file" in labels


@pytest.mark.slow
def test_model_file_preference_is_validated(addon, tmp_path):
    preferences = prefs()
    preferences.smpl_path = str(tmp_path / "missing.pkl")
    assert "not found" in preferences.smpl_problem
    preferences.smpl_path = str(write_official_pickle(make_model_arrays("smpl"), tmp_path / "SMPL_NEUTRAL.pkl"))
    assert preferences.smpl_problem == ""
    preferences.smpl_path = ""
    assert "needs its model file" in preferences.smpl_problem


def test_model_file_is_checked_in_the_background_while_the_ui_runs(addon, tmp_path, monkeypatch):
    """With an event loop the check goes to the fitting process and a timer applies its answer."""
    timers = []
    ui_running = SimpleNamespace(app=SimpleNamespace(background=False, timers=SimpleNamespace(
        register=lambda function, first_interval: timers.append(function))), path=bpy.path, context=bpy.context)  # fmt: skip
    monkeypatch.setattr(addon.preferences, "bpy", ui_running)
    preferences = prefs()
    preferences.mano_path = str(tmp_path / "missing.pkl")
    assert preferences.mano_problem == "the MANO file is being checked: a moment"
    [answer] = timers
    for _ in range(600):
        if answer() is None:
            break
        threading.Event().wait(0.1)
    assert "not found" in preferences.mano_problem
    monkeypatch.undo()
    preferences.mano_path = ""


def test_dependency_installer_refuses_offline(addon):
    assert not bpy.app.online_access  # bpy as a module starts offline
    with pytest.raises(RuntimeError, match="offline"):
        bpy.ops.lvd.install_dependencies()


# -- fitting ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fit_builds_the_character_on_the_scan(pipeline):
    scan = hand_scan("Scan", offset=(1.0, 2.0, 0.0))
    activate(scan)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    [armature] = characters()
    [body_mesh] = armature.children
    assert armature.name == "Scan LVD" and armature.users_collection[0].name == "Scan LVD"
    assert armature["lvd_body_model"] == "anny-hand-right" and armature["lvd_residual_mm"] == 2.5
    assert not armature["lvd_doubtful"]
    expected = pipeline.result(np.zeros(3)).vertices_input  # seed 0 = the first fit, here at the origin
    centre = np.array(blender_support.evaluated_world_vertices(scan)).mean(0)
    error = np.abs(blender_support.evaluated_world_vertices(body_mesh) - (expected + centre)).max()
    assert error < 1e-3
    progress = bpy.context.window_manager.lvd_progress
    assert progress.last_quality == "2.5 mm" and "fitted 1 of 1" in progress.last_summary


def test_batch_fit_skips_broken_objects_by_name(pipeline):
    good = [hand_scan("Hand A", (0, 0, 0)), hand_scan("Hand B", (1, 0, 0))]
    flat = scan_object("Flat", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)], [(0, 1, 3, 2)])
    empty = bpy.data.objects.new("Empty", None)
    bpy.context.scene.collection.objects.link(empty)
    activate(*good, flat, empty)
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    assert sorted(a.name for a in characters()) == ["Hand A LVD", "Hand B LVD"]
    summary = bpy.context.window_manager.lvd_progress.last_summary
    assert "fitted 2 of 4" in summary and "Flat (the mesh is degenerate" in summary and "Empty (" in summary


def test_doubtful_fits_are_named_in_the_summary(pipeline):
    pipeline.doubtful = True
    activate(hand_scan("Hand A", (0, 0, 0)), hand_scan("Hand B", (1, 0, 0)))
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    progress = bpy.context.window_manager.lvd_progress
    assert len(characters()) == 2 and progress.last_quality == "2.5 mm, check"
    assert all(armature["lvd_doubtful"] for armature in characters())
    assert "check Hand A, Hand B (the network may have misread the pose)" in progress.last_summary


def test_a_fit_too_far_off_is_skipped_with_the_units_to_check(pipeline):
    """A scan read in the wrong units ends far from its body: no character, the fix named (as the CLI does)."""
    pipeline.residual_mm = 42_881.0
    activate(hand_scan("Hand A", (0, 0, 0)))
    with pytest.raises(RuntimeError, match="skipped Hand A .the fit is off: the scan lies 42881 mm .median.*set Scan Units"):
        bpy.ops.lvd.fit()
    assert not characters()


def test_batch_fit_with_a_batch_size_fits_scans_together(pipeline):
    hands = [hand_scan(f"Hand {k}", (k, 0, 0)) for k in range(3)]
    flat = scan_object("Flat", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)], [(0, 1, 3, 2)])
    activate(*hands, flat)
    prefs().batch_size = 2
    try:
        assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    finally:
        prefs().batch_size = 0
    assert pipeline.batches == [2, 2]
    assert sorted(a.name for a in characters()) == ["Hand 0 LVD", "Hand 1 LVD", "Hand 2 LVD"]
    summary = bpy.context.window_manager.lvd_progress.last_summary
    assert "fitted 3 of 4" in summary and "Flat (the mesh is degenerate" in summary


def test_automatic_batch_size_is_one_scan_at_a_time_on_the_cpu(addon):
    settings = addon.fitting.FitSettings("anny", None, None, "cpu", None, True, False)
    assert addon.fit_work.fits_per_group(settings, 5) == 1
    assert addon.fit_work.fits_per_group(addon.fitting.FitSettings("anny", None, None, "auto", None, True, False, 3), 5) == 3


def test_cuda_out_of_memory_falls_back_to_the_cpu(pipeline):
    pipeline.oom_on_gpu = True
    prefs().device = "CUDA"
    try:
        activate(hand_scan("Scan"))
        assert bpy.ops.lvd.fit() == {"FINISHED"}
    finally:
        prefs().device = "AUTO"
    assert pipeline.devices == ["cuda", "cpu"] and len(characters()) == 1
    assert "fitted on the CPU" in bpy.context.window_manager.lvd_progress.last_summary


def test_photo_file_is_fitted(pipeline, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(tmp_path / "person.png")
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.lvd.photo_path = str(tmp_path / "person.png")
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    assert [a.name for a in characters()] == ["person.png LVD"]


def test_image_empty_is_fitted_at_the_cursor(pipeline):
    image = bpy.data.images.new("Person", 48, 64)
    image.pixels.foreach_set(np.full(48 * 64 * 4, 0.8, np.float32))
    empty = bpy.data.objects.new("Reference", None)
    empty.empty_display_type, empty.data = "IMAGE", image
    bpy.context.scene.collection.objects.link(empty)
    activate(empty)
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.cursor.location = (2.0, 3.0, 0.0)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    [armature] = characters()
    assert armature.name == "Reference LVD"
    world = blender_support.evaluated_world_vertices(armature.children[0])
    centre = (world.min(0) + world.max(0)) / 2
    assert abs(world[:, 2].min() - 0.0) < 0.01 and np.allclose(centre[:2], (2.0, 3.0), atol=0.01)  # standing on the cursor


BAD_INPUTS = {
    "nothing selected": (lambda tmp: activate(), "nothing selected"),
    "non-mesh object": (lambda tmp: None, "Lamp is a light object"),
    "empty mesh": (lambda tmp: activate(scan_object("Nothing", [])), "no vertices"),
    "degenerate mesh": (lambda tmp: activate(scan_object("Line", [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)])), "degenerate"),
    "photo without a person": (lambda tmp: _black_photo(tmp), "no person"),
    "photo missing": (lambda tmp: setattr(bpy.context.scene.lvd, "input_kind", "PHOTO"), "no photo"),
    "missing SMPL file": (lambda tmp: _scan_with_body_model("SMPL"), "SMPL needs its model file"),
    "missing MANO file": (lambda tmp: _scan_with_body_model("MANO"), "MANO needs its model file"),
}  # fmt: skip


def _scan_with_body_model(identifier):
    activate(hand_scan("Scan"))
    bpy.context.scene.lvd.body_model = identifier


def _black_photo(tmp):
    from PIL import Image

    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(tmp / "dark.png")
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.lvd.photo_path = str(tmp / "dark.png")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_reports_one_line_and_changes_nothing(case, pipeline, tmp_path):
    make, message = BAD_INPUTS[case]
    if case == "non-mesh object":
        lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
        bpy.context.scene.collection.objects.link(lamp)
        make = lambda tmp: activate(lamp)  # noqa: E731
    make(tmp_path)
    before = blender_support.data_block_names()
    with pytest.raises(RuntimeError, match=message) as error:
        bpy.ops.lvd.fit()
    assert len(str(error.value).strip().splitlines()) == 1
    assert blender_support.data_block_names() == before


def test_missing_torch_is_reported(pipeline, monkeypatch, addon):
    activate(hand_scan("Scan"))
    monkeypatch.setattr(addon.operators, "torch_available", lambda: False)
    before = blender_support.data_block_names()
    with pytest.raises(RuntimeError, match="PyTorch is not installed"):
        bpy.ops.lvd.fit()
    assert blender_support.data_block_names() == before


# -- the modal job, driven by hand (headless Blender has no event loop) --------------------------------------
class Recorder:
    def __init__(self):
        self.reports, self.status = [], []

    def report(self, kind, text):
        self.reports.append((kind, text))


def modal_context(recorder):
    real_wm = bpy.context.window_manager
    wm = SimpleNamespace(lvd_progress=real_wm.lvd_progress, event_timer_remove=lambda timer: None)
    workspace = SimpleNamespace(status_text_set=recorder.status.append)
    return SimpleNamespace(window_manager=wm, workspace=workspace, screen=None, scene=bpy.context.scene,
                           view_layer=bpy.context.view_layer, mode=bpy.context.mode)


def drive_modal(addon, run, recorder, events):
    """Call LVD_OT_fit.modal with duck-typed self/context/event until it finishes."""
    operator = SimpleNamespace(_run=run, _timer=object(), report=recorder.report,
                               _finish=lambda r: addon.operators.LVD_OT_fit._finish(operator, r))  # fmt: skip
    context = modal_context(recorder)
    for event_type in events:
        result = addon.operators.LVD_OT_fit.modal(operator, context, SimpleNamespace(type=event_type))
        if result != {"PASS_THROUGH"}:
            return result
        threading.Event().wait(0.01)  # the timer's period, shortened
    raise AssertionError("the job did not finish")


def make_run(addon, count):
    items = []
    for k in range(count):
        vertices = np.random.default_rng(k).normal(size=(50, 3))
        items.append(addon.jobs.Item(f"Scan{k}", {"kind": "scan", "vertices": vertices, "faces": None, "body": "anny-hand"}))
    settings = addon.fitting.FitSettings("anny-hand", None, None, "cpu", None, True, False)
    return addon.fitting.FitRun(items, settings, skipped=[])


def test_modal_finishes_on_timer(pipeline, addon):
    recorder = Recorder()
    run = make_run(addon, 2)
    run.job.start()
    run.job.join(30)
    assert drive_modal(addon, run, recorder, ["MOUSEMOVE"] + ["TIMER"] * 200) == {"FINISHED"}
    assert len(characters()) == 2 and recorder.status[-1] is None
    [(kind, text)] = recorder.reports
    assert kind == {"INFO"} and text.startswith("fitted 2 of 2 in ")


def test_modal_escape_keeps_finished_characters(pipeline, addon):
    pipeline.block_after = 1  # the second fit waits until cancelled
    recorder = Recorder()
    run = make_run(addon, 3)
    run.job.start()
    for _ in range(1000):
        if any(isinstance(m, addon.jobs.Done) for m in list(run.job.messages.queue)):
            break
        threading.Event().wait(0.01)
    assert drive_modal(addon, run, recorder, ["TIMER", "ESC"] + ["TIMER"] * 200) == {"FINISHED"}
    assert [a.name for a in characters()] == ["Scan0 LVD"]
    assert recorder.reports[-1][1].startswith("fitted 1 of 3 in ") and ", cancelled" in recorder.reports[-1][1]
    assert any(text and "Esc to cancel" in text for text in recorder.status)


# -- the real pipeline (lvd_core.pipeline with the shipped network) ------------------------------------------
# The shipped Anny body network and fit: the character lands on the scan object, in the object's world
# placement. Bound: the refined fit lies within ~1-2 cm of a clean synthetic scan (see test_pipeline.py and
# weights/anny-body-scan/manifest.json); 30 mm leaves room for the network's remaining errors.
ON_SCAN_MM = 30.0


@pytest.fixture
def real_pipeline(addon):
    blender_support.reset_scene()
    bpy.context.scene.lvd.body_model = "ANNY"
    bpy.context.scene.lvd.input_kind = "SCAN"


def body_scan_object(name, seed, location=(0.0, 0.0, 0.0)):
    from lvd_core.synth import BodySampling, ScanRealism, make_scan, sample_params

    body = load_body_model("anny")
    rng = np.random.default_rng(seed)
    params = sample_params(body, rng, 1, BodySampling(yaw_range_deg=20, families=("standing", "a_pose")))
    scan = make_scan(body, params, rng, realism=ScanRealism.clean(points=6000))
    obj = scan_object(name, scan.points)
    obj.location = location
    return obj, scan.points + np.asarray(location)


def mean_distance_mm(vertices, points):
    from scipy.spatial import cKDTree

    return float(cKDTree(points).query(vertices)[0].mean() * 1000)


@pytest.mark.slow
def test_real_fit_puts_the_character_on_the_scan(real_pipeline, addon):
    scan, world_points = body_scan_object("Person", seed=3, location=(2.0, -1.0, 0.5))
    activate(scan)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    assert addon.worker.PROCESS.alive()  # the fit ran in the fitting process, kept for the next fit
    [armature] = characters()
    [body_mesh] = armature.children
    assert len(armature.data.bones) == 104 and len(body_mesh.data.vertices) == 13718
    assert mean_distance_mm(blender_support.evaluated_world_vertices(body_mesh), world_points) < ON_SCAN_MM


@pytest.mark.slow
def test_real_batch_fit_skips_the_broken_object(real_pipeline):
    """All three in one batch (lvd_core.pipeline.fit_scans, as on a GPU): the flat one fails in its place."""
    first, first_points = body_scan_object("Person A", seed=4)
    second, second_points = body_scan_object("Person B", seed=5, location=(1.5, 0.0, 0.0))
    flat = scan_object("Flat", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)], [(0, 1, 3, 2)])
    activate(first, second, flat)
    prefs().batch_size = 3
    try:
        assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    finally:
        prefs().batch_size = 0
    by_name = {a.name: a for a in characters()}
    assert sorted(by_name) == ["Person A LVD", "Person B LVD"]
    for name, points in (("Person A LVD", first_points), ("Person B LVD", second_points)):
        [body_mesh] = by_name[name].children
        assert mean_distance_mm(blender_support.evaluated_world_vertices(body_mesh), points) < ON_SCAN_MM
    assert "Flat (" in bpy.context.window_manager.lvd_progress.last_summary


# -- defects found by use -------------------------------------------------------------------------------------
def test_cm_scan_gives_a_real_size_character_standing_where_the_scan_stands(pipeline):
    """A hand scan in centimetres (100x its size in metres): the character is in metres, scale 1, its box's
    bottom centre where the scan's is; the summary says which units were read."""
    scan = scan_object("Hand cm", 100 * hand_vertices() + (50.0, 0.0, 20.0), hand_faces())
    activate(scan)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    [armature] = characters()
    assert np.allclose(armature.matrix_world.to_scale(), 1.0, atol=1e-6)
    body = blender_support.evaluated_world_vertices(armature.children[0])
    expected = pipeline.result(np.zeros(3)).vertices_input  # the same parameters, in metres
    assert np.isclose(np.ptp(body, axis=0).max(), np.ptp(expected, axis=0).max(), rtol=1e-3)
    fitted = pipeline.result(blender_support.evaluated_world_vertices(scan).mean(0), 0.01).vertices_input
    assert np.allclose(bottom(body), bottom(fitted), atol=1e-3)
    assert "scan read in centimetres (at real size)" in bpy.context.window_manager.lvd_progress.last_summary


def hand_vertices():
    body = load_body_model("anny-hand")
    return body.rest_vertices(body.default_shape()[None])[0].numpy().astype(np.float64)


def hand_faces():
    return load_body_model("anny-hand").faces


def bottom(vertices):
    low, high = vertices.min(0), vertices.max(0)
    return np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])


def test_scan_units_setting_is_passed_to_the_core(pipeline):
    activate(hand_scan("Scan"))
    bpy.context.scene.lvd.scan_units = "MM"
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    assert pipeline.units == ["mm"]
    assert "scan read in millimetres" in bpy.context.window_manager.lvd_progress.last_summary


def test_fit_runs_torch_on_the_clis_thread_count(pipeline, addon):
    activate(hand_scan("Scan"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bpy.ops.lvd.fit() == {"FINISHED"}
    finally:
        torch.set_num_threads(threads)
    assert pipeline.threads == [addon.fit_work.TORCH_THREADS] == [1]


def test_auto_body_model_fits_the_hand_model_to_a_hand_sized_mesh(pipeline):
    bpy.context.scene.lvd.body_model = "AUTO"
    hand = hand_scan("Hand")
    person = scan_object("Person", 10 * hand_vertices(), hand_faces())  # ~2 m: a body
    activate(hand, person)
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    assert pipeline.bodies == ["anny-hand", "anny"]  # one fit per body model
    bpy.context.scene.lvd.body_model = "ANNY"  # the choice stays the user's
    activate(hand)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    assert pipeline.bodies[-1] == "anny"


def test_fit_has_no_redo_panel_and_batch_fit_its_own_tooltip(addon):
    fit = bpy.types.LVD_OT_fit
    assert "REGISTER" not in fit.bl_options  # a redo would rerun the fit on the main thread
    single, batch = SimpleNamespace(batch=False), SimpleNamespace(batch=True)
    assert "every selected mesh" in fit.description(bpy.context, batch)
    assert fit.description(bpy.context, single) != fit.description(bpy.context, batch)


def test_every_enum_item_has_a_tooltip(addon):
    for group in (addon.properties.LVD_PG_settings,):
        for prop in group.bl_rna.properties:
            if prop.type == "ENUM":
                assert all(item.description for item in prop.enum_items), f"{prop.identifier} has items without tooltips"


def test_buttons_grey_out_while_a_fit_runs_or_nothing_fittable_is_selected(pipeline):
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    bpy.context.scene.collection.objects.link(camera)
    activate(camera)
    assert not bpy.ops.lvd.fit.poll() and not bpy.ops.lvd.export.poll()
    activate(hand_scan("Scan"))
    assert bpy.ops.lvd.fit.poll()
    bpy.context.window_manager.lvd_progress.running = True
    try:
        assert not bpy.ops.lvd.fit.poll()
    finally:
        bpy.context.window_manager.lvd_progress.running = False


def test_a_selected_scan_is_fitted_when_nothing_is_active(pipeline):
    scan = hand_scan("Scan")
    activate(scan)
    bpy.context.view_layer.objects.active = None
    assert bpy.ops.lvd.fit() == {"FINISHED"} and [a.name for a in characters()] == ["Scan LVD"]


def test_new_characters_end_selected_and_active(pipeline):
    activate(hand_scan("Hand A"), hand_scan("Hand B", (1, 0, 0)))
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    selected = {obj.name for obj in bpy.context.selected_objects}
    assert selected == {"Hand A LVD", "Hand A LVD_body", "Hand B LVD", "Hand B LVD_body"}
    assert bpy.context.view_layer.objects.active.name == "Hand B LVD"


def test_fit_returns_to_the_mode_it_started_in(pipeline):
    scan = hand_scan("Scan")
    activate(scan)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        assert bpy.ops.lvd.fit() == {"FINISHED"}
        assert bpy.context.mode == "EDIT_MESH" and bpy.context.view_layer.objects.active == scan
        assert [a.name for a in characters()] == ["Scan LVD"]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")


def test_messages_name_the_object_in_good_english(pipeline):
    armature = bpy.data.objects.new("Rig", bpy.data.armatures.new("Rig"))
    bpy.context.scene.collection.objects.link(armature)
    activate(armature, hand_scan("Hand"))
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    assert "Rig (Rig is an armature object, not a mesh)" in bpy.context.window_manager.lvd_progress.last_summary


def test_panel_names_the_scan_fit_would_use(pipeline):
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    bpy.context.scene.collection.objects.link(camera)
    activate(camera)
    assert not any("Scan: Camera" in text for text, _ in panel_labels())
    activate(camera, hand_scan("Scan"))
    assert ("Scan: Scan", "MESH_DATA") in panel_labels()


def panel_labels():
    layout = mock.MagicMock()
    bpy.types.LVD_PT_main.draw(mock.Mock(layout=layout), bpy.context)
    return [(c.kwargs.get("text", ""), c.kwargs.get("icon", "NONE")) for c in layout.mock_calls if c[0].endswith("label")]


def test_summary_covers_the_whole_batch_and_wraps_in_the_panel(pipeline, monkeypatch):
    fit_scans = pipeline.fit_scans

    def slow_fit_scans(*args, **kwargs):
        threading.Event().wait(0.3)
        return fit_scans(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_scans", slow_fit_scans)
    activate(*(hand_scan(f"A hand with a long name {k}", (k, 0, 0)) for k in range(3)))
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    progress = bpy.context.window_manager.lvd_progress
    assert progress.last_seconds >= 0.9 and f"in {progress.last_seconds:.1f} s" in progress.last_summary
    lines = [text for text, _ in panel_labels() if text and text in progress.last_summary]
    assert " ".join(lines) == progress.last_summary and all(len(line) <= 40 for line in lines)


def test_export_refuses_an_unsaved_blend_without_a_folder(pipeline, tmp_path, monkeypatch):
    activate(hand_scan("Scan"))
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    monkeypatch.chdir(tmp_path)  # where "//" resolved to before
    with pytest.raises(RuntimeError, match="save the .blend or choose an export folder"):
        bpy.ops.lvd.export()
    assert not list(tmp_path.iterdir())
    (tmp_path / "saved").mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "saved" / "scene.blend"))
    assert bpy.ops.lvd.export() == {"FINISHED"}
    assert [path.name for path in (tmp_path / "saved").glob("*.fbx")] == ["Scan_LVD.fbx"]


def test_photo_fit_uses_the_mask_stands_on_the_cursor_and_adds_the_photos_camera(pipeline, tmp_path):
    from bpy_extras.object_utils import world_to_camera_view
    from PIL import Image

    from lvd_core.photo import crop_pixels

    Image.fromarray(np.full((300, 200, 3), 200, np.uint8)).save(tmp_path / "person.png")
    Image.fromarray(np.full((300, 200), 255, np.uint8)).save(tmp_path / "person_mask.png")
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.lvd.photo_path = str(tmp_path / "person.png")
    bpy.context.scene.cursor.location = (1.0, -2.0, 0.5)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    assert pipeline.masks == [str(tmp_path / "person_mask.png")]
    [armature] = characters()
    world = blender_support.evaluated_world_vertices(armature.children[0])
    assert abs(world[:, 2].min() - 0.5) < 0.01  # feet on the cursor
    scene = bpy.context.scene
    camera = scene.camera
    assert camera is not None and camera.data.type == "ORTHO" and camera.data.background_images[0].image.name == "person.png"
    assert (scene.render.resolution_x, scene.render.resolution_y) == (200, 300)
    assert f"camera {camera.name} sees it as the photo does" in bpy.context.window_manager.lvd_progress.last_summary
    seen = np.array([world_to_camera_view(scene, camera, Vector(v))[:2] for v in world[::50]])  # (0, 0) bottom left
    seen_pixels = np.stack([seen[:, 0] * 200, (1 - seen[:, 1]) * 300], axis=1)
    result = pipeline.result(np.zeros(3))  # what the fake fitted, in the crop's photo frame
    hand = load_body_model("anny-hand")
    photo = hand(result.params).vertices[0].double().numpy() @ photo_from_model(hand)[:3, :3].T
    crop = CropTransform(origin_x=-3.0, origin_y=5.0, scale=0.5, size=256)
    expected = crop.crop_to_photo(crop_pixels(photo, 256))[::50]
    assert np.abs(seen_pixels - expected).max() < 0.5  # pixels


def test_characters_are_built_a_step_per_ui_event(pipeline, addon):
    """With no time to spare, each call of handle (a TIMER event) does one step of the build; the character
    comes out the same as built in one go."""
    run = make_run(addon, 1)
    run.job.run()
    messages, calls = run.job.drain(), 1
    while not run.handle(messages, bpy.context, budget_s=0.0):
        messages, calls = [], calls + 1
    [armature] = characters()
    assert calls >= 3  # the armature, the mesh, the skin weights: a step each at least
    expected = pipeline.result(np.zeros(3)).vertices_input  # seed 0, placed at the scan's centroid below
    centre = run.job.items[0].inputs["vertices"].mean(0)
    assert np.abs(blender_support.evaluated_world_vertices(armature.children[0]) - (expected + centre)).max() < 1e-3


# -- real-size characters and photo cameras with the real pipeline ------------------------------------------------
def character_heights(armatures) -> dict:
    """Armature name -> (its object scale, its body's height in metres)."""
    out = {}
    for armature in armatures:
        [body_mesh] = [child for child in armature.children if child.type == "MESH"]
        out[armature.name] = (tuple(armature.matrix_world.to_scale()), float(np.ptp(blender_support.evaluated_world_vertices(body_mesh)[:, 2])))
    return out


@pytest.fixture(scope="module")
def real_size_fits(addon, shared_data, tmp_path_factory):
    """The real RenderPeople scan imported as it comes (centimetres, 187 units tall) and a synthetic scan in
    millimetres, batch fitted; their heights in the scene and re-imported from FBX and GLB."""
    blender_support.reset_scene()
    bpy.context.scene.lvd.body_model = "AUTO"
    bpy.ops.wm.obj_import(filepath=str(shared_data / "scans" / "rp_dennis_posed_004_30k.obj"))
    [scan_cm] = bpy.context.selected_objects
    scan_cm.name = "Dennis cm"
    scan_mm, _ = body_scan_object("Person mm", seed=3)
    scan_mm.scale = (1000.0, 1000.0, 1000.0)  # the object's world vertices are what is fitted
    activate(scan_cm, scan_mm)
    assert bpy.ops.lvd.fit(batch=True) == {"FINISHED"}
    measured = {"summary": bpy.context.window_manager.lvd_progress.last_summary, "scene": character_heights(characters())}
    folder = tmp_path_factory.mktemp("exported")
    files = export_characters(characters(), folder, "FBX") + export_characters(characters(), folder, "GLB")
    for path in files:
        blender_support.reset_scene()
        if path.suffix == ".fbx":
            bpy.ops.import_scene.fbx(filepath=str(path))
        else:
            bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
        [(_, scale_and_height)] = character_heights(characters()).items()
        measured[path.name] = scale_and_height
    return measured


@pytest.mark.slow
def test_cm_and_mm_scans_give_real_size_characters_in_scene_and_files(real_size_fits):
    assert "Dennis cm read in centimetres; Person mm read in millimetres (at real size)" in real_size_fits["summary"]
    assert len(real_size_fits) == 2 + 4  # summary, scene, two characters x (FBX, GLB)
    for name, (scale, height) in [*real_size_fits["scene"].items(), *((k, v) for k, v in real_size_fits.items() if "." in k)]:
        assert np.allclose(scale, 1.0, atol=1e-4), f"{name}: armature scale {scale}"
        assert 1.5 < height < 2.0, f"{name}: body {height:.2f} m tall"


@pytest.mark.slow
def test_real_photo_fit_lines_up_with_its_mask_through_the_camera(real_pipeline, shared_data):
    from bpy_extras.object_utils import world_to_camera_view
    from PIL import Image

    from lvd_core.synth.renders import rasterize

    bpy.context.scene.lvd.body_model = "AUTO"
    bpy.context.scene.lvd.input_kind = "PHOTO"
    bpy.context.scene.lvd.photo_path = str(shared_data / "images" / "img1.png")
    bpy.context.scene.cursor.location = (0.5, 1.0, 0.25)
    assert bpy.ops.lvd.fit() == {"FINISHED"}
    [armature] = characters()
    [body_mesh] = armature.children
    world = blender_support.evaluated_world_vertices(body_mesh)
    assert abs(world[:, 2].min() - 0.25) < 0.01  # standing on the cursor
    scene = bpy.context.scene
    mask = np.asarray(Image.open(shared_data / "images" / "img1_mask.png").convert("L")) >= 128
    height, width = mask.shape
    seen = np.array([world_to_camera_view(scene, scene.camera, Vector(v)) for v in world])
    pixels = np.stack([seen[:, 0] * width, (1 - seen[:, 1]) * height], axis=1)
    faces = np.array([tuple(p.vertices) for p in body_mesh.data.polygons])
    face_map, _ = rasterize(pixels, seen[:, 2], faces, width)
    body = (face_map >= 0).reshape(width, width)[:height]
    iou = (body & mask).sum() / (body | mask).sum()
    assert iou > 0.5, f"the body seen through the camera covers the person mask at IoU {iou:.2f}"


def test_scan_triangles_are_blenders_triangulation(addon):
    blender_support.reset_scene()
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=3, y_subdivisions=2)
    quads = bpy.context.active_object.data
    hand = hand_scan("Hand").data
    for mesh in (hand, quads):
        mesh.calc_loop_triangles()
        expected = np.array([tuple(t.vertices) for t in mesh.loop_triangles])
        assert np.array_equal(addon.fitting.mesh_triangles(mesh), expected)
