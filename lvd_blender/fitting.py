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
        )


@dataclass
class FitOutcome:
    description: dict  # lvd_core.export.character_description
    frame_matrix: np.ndarray  # (4, 4) the model's fitted frame -> Blender world
    residual_mm: float
    quality: str  # the result's quality_label(short=True): "12.3 mm" for scans, "IoU 0.852" for photos
    seconds: float
    note: str = ""  # e.g. the CUDA -> CPU fallback


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


def fit_item(item: Item, settings: FitSettings, progress, cancel) -> FitOutcome:
    """Fit one input; on CUDA running out of memory, fit again on the CPU and say so."""
    try:
        return _fit(item, settings, settings.device, progress, cancel)
    except Exception as exc:  # torch.cuda.OutOfMemoryError without importing torch here
        if settings.device == "cpu" or "out of memory" not in str(exc).lower():
            raise
    progress(0.0, "CUDA ran out of memory, fitting on the CPU")
    outcome = _fit(item, settings, "cpu", progress, cancel)
    outcome.note = "CUDA ran out of memory: fitted on the CPU"
    return outcome


def _fit(item: Item, settings: FitSettings, device: str, progress, cancel) -> FitOutcome:
    started = time.perf_counter()
    inputs = item.inputs
    options = dict(body=settings.body_model, device=device, iterations=settings.iterations, refine=settings.refine,
                   progress=progress, cancel=cancel)  # fmt: skip
    if settings.model_path:
        options["model_path"] = settings.model_path
    if settings.checkpoint_folder:
        options["checkpoint_folder"] = settings.checkpoint_folder
    if inputs["kind"] == "scan":
        result = pipeline().fit_scan(inputs["vertices"], inputs["faces"], up="z", **options)
    else:
        image = core("inputs.image")
        rgb = image.load_image(inputs["path"]) if "path" in inputs else image.from_blender_pixels(inputs["pixels"], *inputs["size"])
        result = pipeline().fit_photo(rgb, **options)
    body = core("body").load_body_model(result.body_name, settings.model_path)
    description = core("export").character_description(body, result.params)
    if inputs["kind"] == "scan":  # on top of the scan, in the scene's units
        frame = np.diag([1.0 / inputs["metres_per_unit"]] * 3 + [1.0]) @ result.input_from_model
    else:  # photos have no 3D frame: upright at the 3D cursor, without the distance to the camera
        untranslate = np.eye(4)
        untranslate[:3, 3] = -description["fit_transform"][:3, 3]
        frame = inputs["placement"] @ description["model_to_zup"] @ untranslate
    quality = result.quality_label(short=True)
    return FitOutcome(description, frame, float(result.residual_mm), quality, time.perf_counter() - started)


# -- main thread: results ---------------------------------------------------------------------------------
class FitRun:
    """One Fit or Batch fit: the job, and what its messages do to the scene and the progress display."""

    def __init__(self, items: list[Item], settings: FitSettings, skipped: list[str]):
        self.settings = settings
        self.job = Job(items, lambda item, progress, cancel: fit_item(item, settings, progress, cancel))
        self.total = len(items) + len(skipped)
        self.failures = list(skipped)  # "name (why)"
        self.characters: list = []
        self.notes: list[str] = []
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
        )
        self.characters.append(armature_obj)
        status = context.window_manager.lvd_progress
        status.last_seconds, status.last_quality = outcome.seconds, outcome.quality
        if outcome.note and outcome.note not in self.notes:
            self.notes.append(outcome.note)

    def summary(self) -> str:
        """One line: what was fitted, skipped and why."""
        parts = [f"fitted {len(self.characters)} of {self.total}"]
        if self.cancelled:
            parts.append("cancelled")
        if self.failures:
            parts.append("skipped " + "; ".join(self.failures))
        return ", ".join(parts + self.notes)
