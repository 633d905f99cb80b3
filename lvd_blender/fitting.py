"""The Fit pipeline seen from Blender: inputs copied to numpy (main thread), the fit itself (worker thread,
no bpy), and building the fitted character (main thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import bpy
import numpy as np

from .character import build_character
from .core import core
from .jobs import Done, Failed, Finished, Item, Job, Progress
from .properties import BODY_MODELS


@dataclass
class FitSettings:
    """Plain copies of the UI settings and preferences, so the worker never reads bpy."""

    body_model: str  # lvd_core's name
    model_path: str | None  # the user's SMPL / MANO file
    checkpoint_folder: str | None  # None: the bundled networks
    device: str  # "auto", "cuda" or "cpu"
    iterations: int | None
    refine: bool
    shape_as_keys: bool
    batch_size: int = 0  # scans a Batch fit fits together; 0: automatic (lvd_core.devices.batch_size_for)

    @staticmethod
    def from_context(context, preferences) -> "FitSettings":
        settings = context.scene.lvd
        model_path = {"SMPL": preferences.smpl_path, "MANO": preferences.mano_path}.get(settings.body_model)
        return FitSettings(
            body_model=BODY_MODELS[settings.body_model],
            model_path=bpy.path.abspath(model_path) if model_path else None,
            checkpoint_folder=bpy.path.abspath(preferences.checkpoint_folder) if preferences.checkpoint_folder else None,
            device=preferences.device.lower(),
            iterations=settings.iterations or None,
            refine=settings.refine,
            shape_as_keys=settings.shape_as_keys,
            batch_size=preferences.batch_size,
        )


@dataclass
class FitOutcome:
    description: dict  # lvd_core.export.character_description
    frame_matrix: np.ndarray  # (4, 4) the model's fitted frame -> Blender world
    residual_mm: float
    quality: str  # the result's quality_label(short=True): "12.3 mm" for scans, "IoU 0.852" for photos
    seconds: float
    note: str = ""  # e.g. the CUDA -> CPU fallback
    doubtful: bool = False  # the result's `doubtful`: the network likely misread the pose


# -- main thread: inputs ----------------------------------------------------------------------------------
def scan_item(obj, context) -> Item:
    """The mesh object's evaluated (modifiers applied) world-space vertices in metres and its triangles.
    Raises ValueError for objects that cannot be scans."""
    if obj.type != "MESH":
        raise ValueError(f"{obj.name} is a {obj.type.lower()}, not a mesh")
    evaluated = obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        if len(mesh.vertices) == 0:
            raise ValueError(f"{obj.name} has no vertices")
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        mesh.calc_loop_triangles()
        triangles = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
        mesh.loop_triangles.foreach_get("vertices", triangles)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    metres_per_unit = context.scene.unit_settings.scale_length
    vertices = (co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]) * metres_per_unit
    return Item(obj.name, {"kind": "scan", "vertices": vertices, "faces": triangles.reshape(-1, 3) if len(triangles) else None,
                           "metres_per_unit": metres_per_unit})  # fmt: skip


def photo_item(context) -> Item:
    """The photo file of the settings, else the active Image Empty's pixels. Raises ValueError when neither."""
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
    return Item(obj.name, {"kind": "photo", "pixels": pixels, "size": tuple(image.size), "placement": placement})


# -- worker thread: the fit -------------------------------------------------------------------------------
def pipeline():
    """lvd_core's fit pipeline (tests replace this function with a fake)."""
    return core("pipeline")


def fit_group(items: list[Item], settings: FitSettings, progress, cancel) -> list:
    """Fit the items: one through fit_scan / fit_photo, several scans together through fit_scans (one batch,
    what a GPU wants). Returns a FitOutcome or the bad input's ValueError per item. On CUDA running out of
    memory, fit again on the CPU and say so."""
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
    started = time.perf_counter()
    options = dict(body=settings.body_model, device=device, iterations=settings.iterations, refine=settings.refine,
                   progress=progress, cancel=cancel)  # fmt: skip
    if settings.model_path:
        options["model_path"] = settings.model_path
    if settings.checkpoint_folder:
        options["checkpoint_folder"] = settings.checkpoint_folder
    inputs = items[0].inputs
    if len(items) > 1:
        results = pipeline().fit_scans([(item.inputs["vertices"], item.inputs["faces"]) for item in items], up="z", **options)
    elif inputs["kind"] == "scan":
        results = [pipeline().fit_scan(inputs["vertices"], inputs["faces"], up="z", **options)]
    else:
        image = core("inputs.image")
        rgb = image.load_image(inputs["path"]) if "path" in inputs else image.from_blender_pixels(inputs["pixels"], *inputs["size"])
        results = [pipeline().fit_photo(rgb, **options)]
    seconds = (time.perf_counter() - started) / len(items)
    return [result if isinstance(result, Exception) else _outcome(result, item.inputs, settings, seconds)
            for result, item in zip(results, items)]  # fmt: skip


def _outcome(result, inputs: dict, settings: FitSettings, seconds: float) -> FitOutcome:
    """A pipeline FitResult as the character's description and its place in the scene."""
    body = core("body").load_body_model(result.body_name, settings.model_path)
    description = core("export").character_description(body, result.params)
    if inputs["kind"] == "scan":  # on top of the scan, in the scene's units
        frame = np.diag([1.0 / inputs["metres_per_unit"]] * 3 + [1.0]) @ result.input_from_model
    else:  # photos have no 3D frame: upright at the 3D cursor, without the distance to the camera
        untranslate = np.eye(4)
        untranslate[:3, 3] = -description["fit_transform"][:3, 3]
        frame = inputs["placement"] @ description["model_to_zup"] @ untranslate
    return FitOutcome(description, frame, float(result.residual_mm), result.quality_label(short=True), seconds,
                      doubtful=result.doubtful)  # fmt: skip


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
    """One Fit or Batch fit: the job, and what its messages do to the scene and the progress display."""

    def __init__(self, items: list[Item], settings: FitSettings, skipped: list[str]):
        self.settings = settings
        self.job = Job(items, lambda group, progress, cancel: fit_group(group, settings, progress, cancel),
                       fits_per_group(settings, len(items)))  # fmt: skip
        self.total = len(items) + len(skipped)
        self.failures = list(skipped)  # "name (why)"
        self.characters: list = []
        self.notes: list[str] = []
        self.doubtful: list[str] = []  # labels of the fits to check
        self.cancelled = False

    def handle(self, messages, context) -> bool:
        """Apply messages on the main thread; True once the job has finished."""
        status = context.window_manager.lvd_progress
        for message in messages:
            if isinstance(message, Progress):
                status.factor, status.text = message.fraction, message.text
            elif isinstance(message, Done):
                self._build(message.label, message.result, context)
            elif isinstance(message, Failed):
                self.failures.append(f"{message.label} ({message.message})")
            elif isinstance(message, Finished):
                self.cancelled = message.cancelled
                status.running, status.factor, status.text = False, 1.0, ""
                status.last_summary = self.summary()
                return True
        return False

    def _build(self, label: str, outcome: FitOutcome, context) -> None:
        armature_obj, _ = build_character(
            f"{label} LVD",
            outcome.description,
            context.scene.collection,
            shape_as_keys=self.settings.shape_as_keys,
            frame_matrix=outcome.frame_matrix,
            residual_mm=outcome.residual_mm,
            doubtful=outcome.doubtful,
        )
        self.characters.append(armature_obj)
        status = context.window_manager.lvd_progress
        status.last_seconds, status.last_quality = outcome.seconds, outcome.quality
        if outcome.doubtful:
            self.doubtful.append(label)
        if outcome.note and outcome.note not in self.notes:
            self.notes.append(outcome.note)

    def summary(self) -> str:
        """One line: what was fitted, skipped and why."""
        parts = [f"fitted {len(self.characters)} of {self.total}"]
        if self.cancelled:
            parts.append("cancelled")
        if self.failures:
            parts.append("skipped " + "; ".join(self.failures))
        if self.doubtful:
            parts.append("check " + ", ".join(self.doubtful) + " (the network may have misread the pose)")
        return ", ".join(parts + self.notes)
