"""Fit a body model to a photo: person mask, the paper's crop, image LVD, body fit; and the fit's silhouette.

fit_photo: load the image -> person mask (given, or mediapipe's) -> the 256 x 256 person crop -> network input
(RGB + mask) -> LVD descent from the template in the photo frame -> body fit (with scale) to the predicted
vertices.

Frames. A photo has no metric 3D frame, so the result's "input frame" is the photo frame of the person crop
(`lvd_core.nets.compact_image`: x right, y up, z towards the camera, the crop spanning [-1, 1] in x and y,
depth relative to the body's centre). `params` are in the model frame (Anny: Z up, metres), sized as a
body of the model's neutral height would be (the true size is unknown); `input_from_model` (4, 4) is the
similarity from the model frame to the crop's photo frame, and crop pixel (u, v) = 128 * (x + 1, 1 - y).
`PhotoFitResult.crop.transform` maps crop pixels back to the photo's own pixels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .body import BodyModel, load_body_model
from .canonical import rest_template
from .descent import descend
from .devices import pick_device
from .fit import FitOptions, fit_to_vertices
from .inputs.image import PersonCrop, crop_person, load_image, load_mask, network_image
from .inputs.person_mask import NoPersonError, find_person
from .nets.compact_image import PERSON_UNITS, CompactImageLVD, photo_axes
from .pipeline import WEIGHTS_DIR, FitResult, InputError, StageTimer, apply_transform, load_network, report_progress
from .synth.renders import rasterize

__all__ = ["fit_photo", "silhouette_iou", "PhotoFitResult", "NoPersonError", "person_mask"]

DEFAULT_PHOTO_WEIGHTS = {"anny": "anny-body-photo/checkpoint.pt"}
DESCENT_ITERATIONS = 5  # the paper's for images; the descent settles in 4-5 steps (measured: see the manifest)
# The size is unknown (fit_scale). No age restarts: they fix millimetre-deep shape minima, photo LVD is centimetres
# off; measured on 6 crops: the same IoU (0.651 vs 0.652), 38% less fit time.
PHOTO_FIT = FitOptions(fit_scale=True, age_probes=())


@dataclass
class PhotoFitResult(FitResult):
    """A FitResult whose input frame is the photo frame of `crop` (the person crop the network saw)."""

    crop: PersonCrop | None = None


def person_mask(rgb: np.ndarray, mask=None) -> np.ndarray:
    """(H, W) float32 person mask of rgb (H, W, 3) uint8: `mask` (array or file) when given, else the
    person mediapipe finds (NoPersonError when there is none)."""
    return find_person(rgb).mask if mask is None else load_mask(mask, like=rgb)


def resolve_photo_weights(body: str, weights: str | Path | None, checkpoint_folder: str | Path | None = None) -> Path:
    """The image checkpoint to use: the given one, else the default for `body` in the user's folder or ours."""
    if weights:
        return Path(weights).expanduser()
    default = DEFAULT_PHOTO_WEIGHTS.get(body)
    if default is None:
        raise InputError(f"no trained photo network ships for the {body} body model: fit photos with body 'anny'")
    for folder in ([Path(checkpoint_folder).expanduser()] if checkpoint_folder else []) + [WEIGHTS_DIR]:
        if (folder / default).is_file():
            return folder / default
    raise InputError(f"the photo network for {body} is missing ({WEIGHTS_DIR / default}): reinstall LVD or pass --weights")


def photo_from_model(body: BodyModel) -> np.ndarray:
    """(4, 4) similarity from the model frame (metres) to the photo frame, for a body of the model's neutral
    height filling the crop as the paper's crop does (PERSON_UNITS tall), facing the camera."""
    rest = rest_template(body)
    metres_per_unit = float(np.ptp(rest @ photo_axes(body.up_axis)[:2].T, axis=0).max()) / PERSON_UNITS
    matrix = np.eye(4)
    matrix[:3, :3] = photo_axes(body.up_axis) / metres_per_unit
    return matrix


def predict_crop(network: CompactImageLVD, crop: PersonCrop, iterations: int, timings: dict | None = None) -> np.ndarray:
    """LVD on a person crop: (N, 3) the network's vertex subset in the photo frame. Adds "encode" and
    "descent" seconds to `timings`."""
    device = network.template.device
    clock = time.perf_counter()
    with torch.no_grad():
        features = network.encode(network_image(crop, with_mask=True)[None].to(device))
        encoded = time.perf_counter()
        vertices = descend(network, features, network.template[None], iterations=iterations).vertices[0]
    if timings is not None:
        timings.update(encode=round(encoded - clock, 3), descent=round(time.perf_counter() - encoded, 3))
    return vertices.double().cpu().numpy()


def fit_crop(
    network: CompactImageLVD, model: BodyModel, crop: PersonCrop, iterations: int = DESCENT_ITERATIONS,
    progress=None, cancel: threading.Event | None = None, timings: dict | None = None,
) -> PhotoFitResult:  # fmt: skip
    """LVD and the body fit on a person crop (the part of fit_photo after the crop)."""
    timings = {} if timings is None else timings
    report_progress(progress, 0.3, "predicting vertices (LVD)", cancel)
    predicted = predict_crop(network, crop, iterations, timings)
    report_progress(progress, 0.5, "fitting the body", cancel)
    clock = time.perf_counter()
    input_from_model = photo_from_model(model)
    model_from_input = np.linalg.inv(input_from_model)
    targets = torch.as_tensor(apply_transform(model_from_input, predicted)[None], dtype=model.dtype, device=model.device)
    vertex_ids = torch.as_tensor(np.asarray(network.checkpoint_metadata["vertex_ids"]), device=model.device)
    fit = fit_to_vertices(model, targets, vertex_ids, options=PHOTO_FIT)
    timings["fit"] = round(time.perf_counter() - clock, 3)
    vertices_model = fit.vertices[0].detach().cpu().double().numpy()
    report_progress(progress, 1.0, "done", cancel)
    return PhotoFitResult(
        body_name=model.name,
        params=fit.params.to(device="cpu"),
        input_from_model=input_from_model,
        vertices_input=apply_transform(input_from_model, vertices_model),
        lvd_vertices_input=predicted,
        residual_mm=float(1000 * fit.residuals[0].mean()),  # model metres of a neutral-height body
        units="unitless",
        timings=timings,
        crop=crop,
    )


def fit_photo(
    image,
    mask=None,
    *,
    body: str = "anny",
    weights: str | Path | None = None,
    checkpoint_folder: str | Path | None = None,
    device: str = "auto",
    iterations: int | None = None,
    progress=None,
    cancel: threading.Event | None = None,
    **ignored,
) -> PhotoFitResult:
    """Fit `body` to the person in a photo: a path or (H, W, 3) uint8 RGB array; `mask` (path or (H, W)
    array, 1 on the person) or None to find the person with mediapipe.

    progress(fraction, message) is called between stages; setting `cancel` stops at the next stage with
    FitCancelled. Raises NoPersonError when no person is found, ImageInputError / InputError /
    CheckpointError (all ValueError) with a one-line message for unusable input.
    """
    lap = StageTimer()
    report_progress(progress, 0.0, "finding the person", cancel)
    rgb = load_image(image)
    person = person_mask(rgb, mask)
    lap("mask")
    crop = crop_person(rgb, person)
    lap("crop")
    torch_device = pick_device(device)
    network = load_network(resolve_photo_weights(body, weights, checkpoint_folder), torch_device)
    if not isinstance(network, CompactImageLVD):
        raise InputError(f"{weights} is not a photo network (CompactImageLVD): pass a photo checkpoint with --weights")
    if network.checkpoint_metadata.get("body") != body:
        raise InputError(f"the checkpoint was trained for the {network.checkpoint_metadata.get('body')} body model, not {body}")
    model = load_body_model(body, device=torch_device)
    lap("network")
    return fit_crop(network, model, crop, iterations or DESCENT_ITERATIONS, progress, cancel, lap.timings)


# ---------------------------------------------------------------------------------------------------------
# silhouettes


def silhouette(result: FitResult, size: int) -> np.ndarray:
    """(size, size) bool: the pixels of a size x size crop that the fitted body covers."""
    faces = np.asarray(load_body_model(result.body_name).faces, dtype=np.int64)
    points = result.vertices_input * size / 2  # the crop spans 2 units
    pixels = np.stack([points[:, 0] + size / 2, size / 2 - points[:, 1]], axis=1)
    face_map, _ = rasterize(pixels, -points[:, 2], faces, size)
    return (face_map >= 0).reshape(size, size)


def silhouette_iou(result: FitResult, crop_mask: np.ndarray) -> float:
    """Intersection over union of the fitted body's silhouette and a person mask of the crop (S, S) (>= 0.5
    is the person), e.g. `result.crop.mask`."""
    body = silhouette(result, crop_mask.shape[0])
    person = np.asarray(crop_mask) >= 0.5
    return float((body & person).sum() / max((body | person).sum(), 1))
