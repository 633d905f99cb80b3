"""The Fit pipeline seen from Blender: inputs copied to numpy (main thread), the fit itself (lvd_blender.fit_work,
in the fitting process: lvd_blender.worker), and building the fitted character (main thread, in steps between UI
events). Nothing here imports PyTorch."""

from __future__ import annotations

import time
from collections import deque

import bpy
import numpy as np
from mathutils import Matrix

from . import worker
from .character import character_steps
from .fit_work import FitOutcome, FitSettings
from .jobs import Done, Failed, Finished, Item, Progress
from .properties import BODY_MODELS, SCAN_UNITS

# A hand's largest extent is under this many metres (lvd_core.inputs.scan.PLAUSIBLE_SIZE_M): Auto fits the hand
# model to meshes up to this size.
HAND_MAX_SIZE_M = 0.35
# Seconds of main-thread work (building characters) per UI event: well under the 100 ms a user notices.
BUILD_BUDGET_S = 0.03


def fit_settings(context, preferences) -> FitSettings:
    """The fit's settings: plain copies of the scene's LVD settings and the add-on's preferences."""
    settings = context.scene.lvd
    model_path = {"SMPL": preferences.smpl_path, "SMPLX": preferences.smplx_path, "MANO": preferences.mano_path}.get(settings.body_model)
    return FitSettings(
        body_model=BODY_MODELS[settings.body_model],
        model_path=bpy.path.abspath(model_path) if model_path else None,
        checkpoint_folder=bpy.path.abspath(preferences.checkpoint_folder) if preferences.checkpoint_folder else None,
        device=preferences.device.lower(),
        iterations=settings.iterations or None,
        refine=settings.refine,
        shape_as_keys=settings.shape_as_keys,
        batch_size=preferences.batch_size,
        scan_units=SCAN_UNITS[settings.scan_units],
        metres_per_unit=context.scene.unit_settings.scale_length,
    )


# -- main thread: inputs ----------------------------------------------------------------------------------
def scan_objects(context, batch: bool) -> list:
    """The objects Fit (one: the active mesh, else the only selected one) or Batch Fit (every selected one)
    would fit; ValueError saying what to select when there is none."""
    selected = [obj for obj in context.selected_objects if obj.type == "MESH"]
    if batch:
        if not context.selected_objects:
            raise ValueError("nothing selected: select the mesh objects of the scans")
        return list(context.selected_objects)
    active = context.active_object
    if active is not None and (active.type == "MESH" or not selected):
        return [active]
    if len(selected) == 1:
        return selected
    if selected:
        raise ValueError(f"{len(selected)} meshes selected and none active: click the scan to fit, or use Batch Fit")
    raise ValueError("nothing selected: select the mesh object of a scan")


def object_kind(obj) -> str:
    """"an armature", "a light", ...: the object's type for messages."""
    kind = obj.bl_rna.properties["type"].enum_items[obj.type].name.lower()
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def scan_item(obj, context, settings: FitSettings) -> Item:
    """The mesh object's evaluated (modifiers applied) world-space vertices (Blender units) and triangles, and
    the body model to fit. Raises ValueError for objects that cannot be scans."""
    if obj.type != "MESH":
        raise ValueError(f"{obj.name} is {object_kind(obj)} object, not a mesh")
    if obj.mode == "EDIT":
        obj.update_from_editmode()  # edits not yet written to the mesh
    evaluated = obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        if len(mesh.vertices) == 0:
            raise ValueError(f"{obj.name} has no vertices")
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.attributes["position"].data.foreach_get("vector", co)  # 10x faster than vertices' "co"
        triangles = mesh_triangles(mesh)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    vertices = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    return Item(obj.name, {"kind": "scan", "vertices": vertices, "faces": triangles, "body": scan_body_model(vertices, settings)})


def mesh_triangles(mesh) -> np.ndarray | None:
    """(F, 3) vertex indices of the mesh's triangles (polygons triangulated), None without faces. A triangle
    mesh (most scans) is read from its face corners: reading loop_triangles takes ~1 s per million faces."""
    corners = mesh.attributes.get(".corner_vert")
    if corners is not None and len(mesh.loops) == 3 * len(mesh.polygons):  # every polygon a triangle
        indices = np.empty(len(mesh.loops), dtype=np.int32)
        corners.data.foreach_get("value", indices)
    else:
        mesh.calc_loop_triangles()
        indices = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", indices)
    return indices.reshape(-1, 3).astype(np.int64) if len(indices) else None


def scan_body_model(vertices: np.ndarray, settings: FitSettings) -> str:
    """The body model to fit to a scan: the chosen one, or for "auto" the hand model when the scan is
    hand-sized (its largest extent, in the scan units chosen, else the scene's, up to HAND_MAX_SIZE_M)."""
    if settings.body_model != "auto":
        return settings.body_model
    metres = {"m": 1.0, "cm": 0.01, "mm": 0.001}.get(settings.scan_units, settings.metres_per_unit)
    return BODY_MODELS["ANNY_HAND"] if np.ptp(vertices, axis=0).max() * metres <= HAND_MAX_SIZE_M else BODY_MODELS["ANNY"]


def photo_item(context) -> Item:
    """The photo file of the settings, else the active Image Empty's pixels and its file (the fit reads the
    person mask saved beside it, <stem>_mask.png, as the CLI does). Raises ValueError when there is no photo."""
    path = context.scene.lvd.photo_path
    placement = np.array(context.scene.cursor.matrix)
    if path:
        path = bpy.path.abspath(path)
        return Item(bpy.path.basename(path), {"kind": "photo", "path": path, "placement": placement})
    obj = context.active_object
    if obj is None or obj.type != "EMPTY" or obj.empty_display_type != "IMAGE" or obj.data is None:
        raise ValueError("no photo: choose an image file or make an Image Empty (reference image) active")
    image = obj.data
    pixels = np.empty(len(image.pixels), dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return Item(obj.name, {"kind": "photo", "pixels": pixels, "size": tuple(image.size), "image": image.name,
                           "image_file": bpy.path.abspath(image.filepath) if image.filepath else None,  # its mask's folder
                           "placement": placement})  # fmt: skip


# -- main thread: results ---------------------------------------------------------------------------------
def fit_job(items: list[Item], settings: FitSettings) -> worker.WorkerJob:
    """The job fitting `items` in the fitting process."""
    return worker.WorkerJob(items, settings)


class FitRun:
    """One Fit or Batch fit: the job, and what its messages do to the scene and the progress display.
    Characters are built a step at a time (character_steps), at most `budget_s` of work per call of handle."""

    def __init__(self, items: list[Item], settings: FitSettings, skipped: list[str]):
        self.settings = settings
        self.job = fit_job(items, settings)
        self.total = len(items) + len(skipped)
        self.failures = list(skipped)  # "name (why)"
        self.characters: list = []
        self.units: dict[str, list[str]] = {}  # units read -> the scans read in them
        self.notes: list[str] = []
        self.doubtful: list[str] = []  # labels of the fits to check
        self.quality = ""  # the last fit's quality_label(short=True)
        self.camera_note = ""  # photos: the camera added
        self.cancelled = False
        self.started = time.perf_counter()
        self.seconds = 0.0  # the whole run's, once finished
        self._pending: deque = deque()  # messages not applied yet
        self._building = None  # (label, outcome, character_steps generator) of the character being built

    def handle(self, messages, context, budget_s: float | None = None) -> bool:
        """Apply messages on the main thread, stopping once `budget_s` seconds of work are done (None: all of
        them); True once the job has finished and every character is built."""
        self._pending.extend(messages)
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        status = context.window_manager.lvd_progress
        while True:
            if self._building is not None and not self._advance_build(context, deadline):
                return False
            if not self._pending:
                return False
            message = self._pending.popleft()
            if isinstance(message, Progress):
                status.factor, status.text = message.fraction, message.text
            elif isinstance(message, Done):
                self._building = (message.label, message.result, self._steps(message.label, message.result, context))
            elif isinstance(message, Failed):
                self.failures.append(f"{message.label} ({message.message})")
            elif isinstance(message, Finished):
                self.cancelled = message.cancelled
                self.seconds = time.perf_counter() - self.started
                self._select_characters(context)
                status.running, status.factor, status.text = False, 1.0, ""
                status.last_seconds = self.seconds
                status.last_summary = self.summary()
                return True

    def _steps(self, label: str, outcome: FitOutcome, context):
        return character_steps(f"{label} LVD", outcome.description, context.scene.collection,
                               shape_as_keys=self.settings.shape_as_keys, frame_matrix=outcome.frame_matrix,
                               residual_mm=outcome.residual_mm, doubtful=outcome.doubtful)  # fmt: skip

    def _advance_build(self, context, deadline: float | None) -> bool:
        """Build the current character, one step at least, until it is done (True) or the deadline passes (False)."""
        label, outcome, steps = self._building
        while True:
            try:
                next(steps)
            except StopIteration as built:
                self._building = None
                self._record(label, outcome, built.value[0], context)
                return True
            except ReferenceError:  # the half-built character was deleted meanwhile
                self._building = None
                self.failures.append(f"{label} (its character was deleted while it was built)")
                return True
            if deadline is not None and time.perf_counter() >= deadline:
                return False

    def _record(self, label: str, outcome: FitOutcome, armature_obj, context) -> None:
        self.characters.append(armature_obj)
        if outcome.camera is not None:
            camera = add_photo_camera(f"{label} LVD camera", outcome.camera, armature_obj.users_collection[0], context.scene)
            width, height = outcome.camera["resolution"]
            self.camera_note = f"camera {camera.name} sees it as the photo does (render size set to {width} x {height})"
        self.quality = context.window_manager.lvd_progress.last_quality = outcome.quality
        if outcome.units is not None:
            self.units.setdefault(outcome.units, []).append(label)
        if outcome.doubtful:
            self.doubtful.append(label)
        if outcome.note and outcome.note not in self.notes:
            self.notes.append(outcome.note)

    def _select_characters(self, context) -> None:
        """The new characters (armature and body) selected, the last one active; in another mode than Object
        (e.g. editing the scan) the mode and its object are kept."""
        alive = [armature for armature in self.characters if armature.name in context.view_layer.objects]
        if not alive or context.mode != "OBJECT":
            return
        for obj in context.view_layer.objects:
            obj.select_set(False)
        for armature in alive:
            for obj in (armature, *armature.children):
                obj.select_set(True)
        context.view_layer.objects.active = alive[-1]

    def summary(self) -> str:
        """One line: what was fitted in how long, in which units the scans were read, what was skipped and why."""
        fitted = f"fitted {len(self.characters)} of {self.total} in {self.seconds:.1f} s"
        if len(self.characters) == 1:
            fitted += f" ({self.quality})"
        parts = [fitted]
        if self.cancelled:
            parts.append("cancelled")
        if self.units:
            parts.append(units_note(self.units, single=len(self.characters) == 1))
        if self.failures:
            parts.append("skipped " + "; ".join(self.failures))
        if self.doubtful:
            parts.append("check " + ", ".join(self.doubtful) + " (the network may have misread the pose)")
        return ", ".join(parts + ([self.camera_note] if self.camera_note else []) + self.notes)

UNIT_WORDS = {"m": "metres", "cm": "centimetres", "mm": "millimetres"}


def units_note(scans_by_units: dict[str, list[str]], single: bool) -> str:
    """How the scans' units were read: "scan read in centimetres (character at real size)", or per unit
    with the scans' names when they differ."""
    def words(units: str) -> str:
        return f"read in {UNIT_WORDS[units]}" if units in UNIT_WORDS else "of unknown units (sized like the model)"

    if len(scans_by_units) == 1:
        [units] = scans_by_units
        note = ("scan " if single else "scans ") + words(units)
    else:
        note = "; ".join(f"{', '.join(labels)} {words(units)}" for units, labels in scans_by_units.items())
    return note + (" (at real size)" if any(units in ("cm", "mm") for units in scans_by_units) else "")


def add_photo_camera(name: str, camera: dict, collection, scene) -> bpy.types.Object:
    """The camera of photo_camera, with the photo as its background; the scene's camera when it has none, and
    the render size the photo's (so the camera frame is the photo)."""
    data = bpy.data.cameras.new(name)
    data.type, data.ortho_scale = "ORTHO", camera["ortho_scale"]
    data.clip_start, data.clip_end = camera["ortho_scale"] * 1e-3, camera["clip_end"]
    image = bpy.data.images.get(camera["image"]) if camera.get("image") else None
    if image is None and camera.get("path"):
        image = bpy.data.images.load(camera["path"], check_existing=True)
    if image is not None:
        background = data.background_images.new()
        background.image, background.frame_method = image, "FIT"
        data.show_background_images = True
    obj = bpy.data.objects.new(name, data)
    obj.matrix_world = Matrix(camera["matrix"].tolist())
    collection.objects.link(obj)
    scene.render.resolution_x, scene.render.resolution_y = camera["resolution"]
    if scene.camera is None:
        scene.camera = obj
    return obj
