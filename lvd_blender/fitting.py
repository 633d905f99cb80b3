"""The Fit pipeline seen from Blender: inputs copied to numpy (main thread), the fit itself (worker thread,
no bpy), and building the fitted character (main thread, in steps between UI events)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
from mathutils import Matrix

from .character import character_steps, rigid_and_scale
from .core import core
from .jobs import Done, Failed, Finished, Item, Job, Progress
from .properties import BODY_MODELS, SCAN_UNITS

# torch CPU threads of a fit: the CLI's default (lvd --threads), faster than more on the fit's many small operations.
TORCH_THREADS = 1
# A hand's largest extent is under this many metres (lvd_core.inputs.scan.PLAUSIBLE_SIZE_M): Auto fits the hand
# model to meshes up to this size.
HAND_MAX_SIZE_M = 0.35
# Seconds of main-thread work (building characters) per UI event: well under the 100 ms a user notices.
BUILD_BUDGET_S = 0.03


@dataclass
class FitSettings:
    """Plain copies of the UI settings and preferences, so the worker never reads bpy."""

    body_model: str  # lvd_core's name; "auto": per scan, the hand model for hand-sized meshes, else the body
    model_path: str | None  # the user's SMPL / MANO file
    checkpoint_folder: str | None  # None: the bundled networks
    device: str  # "auto", "cuda" or "cpu"
    iterations: int | None
    refine: bool
    shape_as_keys: bool
    batch_size: int = 0  # scans a Batch fit fits together; 0: automatic (lvd_core.devices.batch_size_for)
    scan_units: str | None = None  # what one Blender unit of a scan is ("m", "cm", "mm"); None: the core reads it
    metres_per_unit: float = 1.0  # the scene's unit scale: the character is built at real size in the scene's units

    @staticmethod
    def from_context(context, preferences) -> "FitSettings":
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


@dataclass
class FitOutcome:
    description: dict  # lvd_core.export.character_description
    frame_matrix: np.ndarray  # (4, 4) the model's fitted frame -> Blender world
    residual_mm: float
    quality: str  # the short quality label ("12.3 mm" for scans, "IoU 0.852" for photos) and the body in words
    units: str | None = None  # scans: the units the core read ("m", "cm", "mm", "unitless"); None for photos
    camera: dict | None = None  # photos: the camera that sees the body as the photo does (photo_camera)
    note: str = ""  # e.g. the CUDA -> CPU fallback
    doubtful: bool = False  # the result's `doubtful`: the network likely misread the pose


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
    """The photo file of the settings, else the active Image Empty's pixels, with the person mask saved
    beside the image file (<stem>_mask.png, as the CLI reads it) when there is one. Raises ValueError when
    there is no photo."""
    path = context.scene.lvd.photo_path
    placement = np.array(context.scene.cursor.matrix)
    if path:
        path = bpy.path.abspath(path)
        return Item(bpy.path.basename(path), {"kind": "photo", "path": path, "mask": _given_mask(path), "placement": placement})
    obj = context.active_object
    if obj is None or obj.type != "EMPTY" or obj.empty_display_type != "IMAGE" or obj.data is None:
        raise ValueError("no photo: choose an image file or make an Image Empty (reference image) active")
    image = obj.data
    pixels = np.empty(len(image.pixels), dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return Item(obj.name, {"kind": "photo", "pixels": pixels, "size": tuple(image.size), "image": image.name,
                           "mask": _given_mask(bpy.path.abspath(image.filepath)) if image.filepath else None,
                           "placement": placement})  # fmt: skip


def _given_mask(photo_path: str) -> str | None:
    mask = core("inputs.image").given_mask(Path(photo_path))
    return None if mask is None else str(mask)


# -- worker thread: the fit -------------------------------------------------------------------------------
def pipeline():
    """lvd_core's fits: fit_scans (lvd_core.pipeline) and fit_photo (lvd_core.photo); tests replace this
    function with a fake."""
    return SimpleNamespace(fit_scans=core("pipeline").fit_scans, fit_photo=core("photo").fit_photo)


def fit_group(items: list[Item], settings: FitSettings, progress, cancel) -> list:
    """Fit the items: scans through fit_scans (several together: one batch, what a GPU wants; scans of other
    body models apart), a photo through fit_photo. Returns a FitOutcome or the bad input's ValueError per item.
    On CUDA running out of memory, fit again on the CPU and say so."""
    core("devices").set_torch_threads(TORCH_THREADS)
    try:
        return _fit(items, settings, settings.device, progress, cancel)
    except Exception as exc:  # torch.cuda.OutOfMemoryError without importing torch here
        if settings.device == "cpu" or "out of memory" not in str(exc).lower():
            raise
    progress(0.0, "CUDA ran out of memory, fitting on the CPU")
    outcomes = _fit(items, settings, "cpu", progress, cancel)
    for outcome in outcomes:
        if isinstance(outcome, FitOutcome):
            outcome.note = "CUDA ran out of memory: fitted on the CPU"
    return outcomes


def _fit(items: list[Item], settings: FitSettings, device: str, progress, cancel) -> list:
    options = dict(device=device, iterations=settings.iterations, refine=settings.refine, progress=progress, cancel=cancel)
    if settings.model_path:
        options["model_path"] = settings.model_path
    if settings.checkpoint_folder:
        options["checkpoint_folder"] = settings.checkpoint_folder
    inputs = items[0].inputs
    if inputs["kind"] == "photo":
        image = core("inputs.image")
        rgb = image.load_image(inputs["path"]) if "path" in inputs else image.from_blender_pixels(inputs["pixels"], *inputs["size"])
        body = "anny" if settings.body_model == "auto" else settings.body_model
        result = pipeline().fit_photo(rgb, inputs["mask"], body=body, **options)
        return [_photo_outcome(result, inputs, settings, rgb.shape[1::-1])]
    outcomes: list = [None] * len(items)
    for body in dict.fromkeys(item.inputs["body"] for item in items):
        indices = [i for i, item in enumerate(items) if item.inputs["body"] == body]
        sources = [(items[i].inputs["vertices"], items[i].inputs["faces"], "the mesh") for i in indices]  # labels name it
        results = pipeline().fit_scans(sources, body=body, units=settings.scan_units, up="z", **options)
        for i, result in zip(indices, results):
            outcomes[i] = result if isinstance(result, Exception) else _checked_scan_outcome(result, settings)
    return outcomes


def _description(result, settings: FitSettings) -> dict:
    body = core("body").load_body_model(result.body_name, settings.model_path)
    return core("export").character_description(body, result.params)


def _quality(result, settings: FitSettings) -> str:
    """The fit's short quality label and the fitted body in words (sex, age, weight, height when known)."""
    measurements = core("measurements")
    body = core("body").load_body_model(result.body_name, settings.model_path)
    body_in_words = measurements.describe(measurements.fit_description(body, result.params, real_size=result.units != "unitless"))
    return f"{result.quality_label(short=True)}; {body_in_words}" if body_in_words else result.quality_label(short=True)


def _scan_outcome(result, settings: FitSettings) -> FitOutcome:
    """On the scan, at real size in the scene's units: the fit's frame scaled about the point where the body
    stands (the bottom centre of its box) when the scan's units are not the scene's."""
    world_from_model = result.input_from_model  # the scan was given in world coordinates
    _, units_per_metre = rigid_and_scale(world_from_model)
    frame = scaled_about(bottom_centre(result.vertices_input), 1.0 / settings.metres_per_unit / units_per_metre) @ world_from_model
    return FitOutcome(_description(result, settings), frame, float(result.residual_mm), _quality(result, settings),
                      units=result.units, doubtful=result.doubtful)  # fmt: skip


def _checked_scan_outcome(result, settings: FitSettings):
    """The scan's FitOutcome, or the ScanError of a fit too far off to be a result (wrong units: lvd_core's check)."""
    try:
        core("results").check_residual(result, fix="set Scan Units to the scan's units")
    except ValueError as error:
        return error
    return _scan_outcome(result, settings)


def _photo_outcome(result, inputs: dict, settings: FitSettings, image_size: tuple[int, int]) -> FitOutcome:
    """Photos have no 3D frame: the body stands on the 3D cursor (its lowest point there) at the model's size,
    with a camera that sees it as the photo does."""
    description = _description(result, settings)
    zup = description["model_to_zup"]
    vertices_zup = core("inputs.frame").apply_transform(zup @ np.linalg.inv(result.input_from_model), result.vertices_input)
    frame = inputs["placement"] @ scaled_about(np.zeros(3), 1.0 / settings.metres_per_unit)
    frame = frame @ translation(-bottom_centre(vertices_zup)) @ zup
    camera = photo_camera(frame @ np.linalg.inv(result.input_from_model), result.crop.transform, image_size)
    camera.update(path=inputs.get("path"), image=inputs.get("image"))
    return FitOutcome(description, frame, float(result.residual_mm), _quality(result, settings), camera=camera)


def photo_camera(world_from_photo: np.ndarray, crop, image_size: tuple[int, int]) -> dict:
    """The orthographic camera whose view is the photo (the photo frame of lvd_core.photo: x right, y up,
    z towards the camera, the person crop spanning [-1, 1], `crop` its CropTransform): matrix (4, 4) world,
    ortho_scale and clip_end in Blender units, resolution (width, height) in pixels."""
    rigid, units_per_photo_unit = rigid_and_scale(world_from_photo)
    width, height = image_size
    centre = crop.photo_to_crop(np.array([width / 2.0, height / 2.0]))
    centre_photo = np.array([2.0 * centre[0] / crop.size - 1.0, 1.0 - 2.0 * centre[1] / crop.size, 0.0])
    view_size = max(width, height) * 2.0 * crop.scale / crop.size * units_per_photo_unit
    matrix = rigid.copy()
    matrix[:3, 3] = core("inputs.frame").apply_transform(world_from_photo, centre_photo[None])[0] + rigid[:3, 2] * 2.0 * view_size
    return {"matrix": matrix, "ortho_scale": view_size, "clip_end": 4.0 * view_size, "resolution": (width, height)}


def translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def scaled_about(point: np.ndarray, factor: float) -> np.ndarray:
    """(4, 4) uniform scaling by `factor` that keeps `point` in place."""
    return translation(point) @ np.diag([factor] * 3 + [1.0]) @ translation(-np.asarray(point))


def bottom_centre(vertices: np.ndarray) -> np.ndarray:
    """(3,) the centre of the vertices' box in x and y, at their lowest z."""
    low, high = vertices.min(0), vertices.max(0)
    return np.array([(low[0] + high[0]) / 2, (low[1] + high[1]) / 2, low[2]])


def fits_per_group(settings: FitSettings, count: int) -> int:
    """Scans a job fits together: the preference, else (automatic) lvd_core's batch size for the device, which
    loads PyTorch (on the main thread): only a batch that may run on a GPU asks."""
    if settings.batch_size:
        return settings.batch_size
    if count == 1 or settings.device == "cpu":
        return 1
    devices = core("devices")
    try:
        return devices.batch_size_for(devices.pick_device(settings.device))
    except RuntimeError:  # CUDA asked for but missing: each fit reports it
        return 1


# -- main thread: results ---------------------------------------------------------------------------------
class FitRun:
    """One Fit or Batch fit: the job, and what its messages do to the scene and the progress display.
    Characters are built a step at a time (character_steps), at most `budget_s` of work per call of handle."""

    def __init__(self, items: list[Item], settings: FitSettings, skipped: list[str]):
        self.settings = settings
        self.job = Job(items, lambda group, progress, cancel: fit_group(group, settings, progress, cancel),
                       fits_per_group(settings, len(items)))  # fmt: skip
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
