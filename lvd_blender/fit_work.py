"""The fit itself, in the fitting process (lvd_blender.worker): plain copies of the inputs and settings in,
FitOutcomes out (numpy and plain data, what the main thread builds characters from). No bpy here: this module
runs outside Blender's process, and in it on a thread when tests fake the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .jobs import Item, Job
from .placement import bottom_centre, rigid_and_scale, scaled_about, translation

# torch CPU threads of a fit: the CLI's default (lvd --threads), faster than more on the fit's many small operations.
TORCH_THREADS = 1


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


@dataclass
class FitOutcome:
    description: dict  # lvd_core.character.character_description
    frame_matrix: np.ndarray  # (4, 4) the model's fitted frame -> Blender world
    residual_mm: float
    quality: str  # the short quality label ("12.3 mm" for scans, "IoU 0.852" for photos) and the body in words
    units: str | None = None  # scans: the units the core read ("m", "cm", "mm", "unitless"); None for photos
    camera: dict | None = None  # photos: the camera that sees the body as the photo does (photo_camera)
    note: str = ""  # e.g. the CUDA -> CPU fallback
    doubtful: bool = False  # the result's `doubtful`: the network likely misread the pose


def pipeline():
    """lvd_core's fits: fit_scans (lvd_core.pipeline) and fit_photo (lvd_core.photo); tests replace this
    function with a fake."""
    from lvd_core import photo, pipeline

    return SimpleNamespace(fit_scans=pipeline.fit_scans, fit_photo=photo.fit_photo)


def fit_job(items: list[Item], settings: FitSettings, post=None) -> Job:
    """The job that fits `items` (scans in groups of fits_per_group), posting its messages to `post`."""
    return Job(items, lambda group, progress, cancel: fit_group(group, settings, progress, cancel),
               fits_per_group(settings, len(items)), post)  # fmt: skip


def model_file_job(items: list[Item], settings=None, post=None) -> Job:
    """The job that checks body-model files: each item's inputs, (kind, path), load as that body model (Done)
    or its BodyModelError says why not (Failed)."""

    def check(group: list[Item], progress, cancel) -> list:
        from lvd_core.body import load_body_model

        [item] = group
        load_body_model(*item.inputs)
        return [""]

    return Job(items, check, 1, post)


def fit_group(items: list[Item], settings: FitSettings, progress, cancel) -> list:
    """Fit the items: scans through fit_scans (several together: one batch, what a GPU wants; scans of other
    body models apart), a photo through fit_photo. Returns a FitOutcome or the bad input's ValueError per item.
    On CUDA running out of memory, fit again on the CPU and say so."""
    from lvd_core.devices import set_torch_threads

    set_torch_threads(TORCH_THREADS)
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
        from lvd_core.inputs import image

        rgb = image.load_image(inputs["path"]) if "path" in inputs else image.from_blender_pixels(inputs["pixels"], *inputs["size"])
        body = "anny" if settings.body_model == "auto" else settings.body_model
        result = pipeline().fit_photo(rgb, given_mask(inputs.get("path") or inputs.get("image_file")), body=body, **options)
        return [_photo_outcome(result, inputs, settings, rgb.shape[1::-1])]
    outcomes: list = [None] * len(items)
    for body in dict.fromkeys(item.inputs["body"] for item in items):
        indices = [i for i, item in enumerate(items) if item.inputs["body"] == body]
        sources = [(items[i].inputs["vertices"], items[i].inputs["faces"], "the mesh") for i in indices]  # labels name it
        results = pipeline().fit_scans(sources, body=body, units=settings.scan_units, up="z", **options)
        for i, result in zip(indices, results):
            outcomes[i] = result if isinstance(result, Exception) else _checked_scan_outcome(result, settings)
    return outcomes


def given_mask(photo_path: str | None) -> str | None:
    """The person mask saved beside the photo file (<stem>_mask.png, as the CLI reads it), if any."""
    from lvd_core.inputs.image import given_mask as mask_beside

    mask = mask_beside(Path(photo_path)) if photo_path else None
    return None if mask is None else str(mask)


def _description(result, settings: FitSettings) -> dict:
    from lvd_core.body import load_body_model
    from lvd_core.character import character_description

    return character_description(load_body_model(result.body_name, settings.model_path), result.params)


def _quality(result, settings: FitSettings) -> str:
    """The fit's short quality label and the fitted body in words (sex, age, weight, height when known)."""
    from lvd_core.body import load_body_model
    from lvd_core.measurements import describe, fit_description

    body = load_body_model(result.body_name, settings.model_path)
    body_in_words = describe(fit_description(body, result.params, real_size=result.units != "unitless"))
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
    from lvd_core.results import check_residual

    try:
        check_residual(result, fix="set Scan Units to the scan's units")
    except ValueError as error:
        return error
    return _scan_outcome(result, settings)


def _photo_outcome(result, inputs: dict, settings: FitSettings, image_size: tuple[int, int]) -> FitOutcome:
    """Photos have no 3D frame: the body stands on the 3D cursor (its lowest point there) at the model's size,
    with a camera that sees it as the photo does."""
    description = _description(result, settings)
    from lvd_core.inputs.frame import apply_transform

    zup = description["model_to_zup"]
    vertices_zup = apply_transform(zup @ np.linalg.inv(result.input_from_model), result.vertices_input)
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
    from lvd_core.inputs.frame import apply_transform

    matrix = rigid.copy()
    matrix[:3, 3] = apply_transform(world_from_photo, centre_photo[None])[0] + rigid[:3, 2] * 2.0 * view_size
    return {"matrix": matrix, "ortho_scale": view_size, "clip_end": 4.0 * view_size, "resolution": (width, height)}


def fits_per_group(settings: FitSettings, count: int) -> int:
    """Scans a job fits together: the preference, else (automatic) lvd_core's batch size for the device (which
    loads PyTorch): only a batch that may run on a GPU asks."""
    if settings.batch_size:
        return settings.batch_size
    if count == 1 or settings.device == "cpu":
        return 1
    from lvd_core import devices

    try:
        return devices.batch_size_for(devices.pick_device(settings.device))
    except RuntimeError:  # CUDA asked for but missing: each fit reports it
        return 1


