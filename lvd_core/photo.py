"""Fit a body model to a photo: person mask, the paper's crop, image LVD, body fit; and the fit's silhouette.

fit_photo: load the image -> person mask (given, or mediapipe's) -> the 256 x 256 person crop -> network input
(RGB + mask) -> LVD descent from the template in the photo frame -> body fit (with scale) to the predicted
vertices -> refinement of the silhouette against the person mask (`silhouette_pairing`: the body's outline
and the mask's outline paired two-way in the image plane, the LVD vertices as the anchor).

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .body import BodyModel, load_body_model
from .canonical import rest_template
from .descent import descend
from .devices import pick_device
from .fit import FitOptions, LandmarkTargets, fit_to_vertices, refine_with_pairs
from .inputs.image import PersonCrop, crop_person, load_image, load_mask, network_image
from .inputs.person_mask import NoPersonError, find_person
from .landmarks.detect import INDEX, NAMES, detect_image
from .landmarks.regressor import fit_landmarks, landmark_targets
from .nets.compact_image import PERSON_UNITS, CompactImageLVD, photo_axes
from .inputs.frame import apply_transform
from .checkpoints import load_network, resolve_weights
from .pipeline import held_extremities
from .results import FitResult, InputError, StageTimer, report_progress
from .synth.renders import rasterize
from .transfer import TRANSFERRED_BODIES, source_model, transferred

__all__ = ["fit_photo", "silhouette_iou", "PhotoFitResult", "NoPersonError", "person_mask"]

DEFAULT_PHOTO_WEIGHTS = {"anny": "anny-body-photo/checkpoint.pt"}
DESCENT_ITERATIONS = 5  # the paper's for images; the descent settles in 4-5 steps (measured: see the manifest)
# The silhouette pairs' weight against the LVD vertices (refine_with_pairs), chosen on 6 held-out renders: IoU
# 0.843 without, 0.881 / 0.892 / 0.908 at 1 / 2 / 5, the 3D vertex error unchanged (138 mm, mostly depth).
SILHOUETTE_WEIGHT = 5.0
# The size is unknown (fit_scale). No age restarts: they fix millimetre-deep shape minima, photo LVD is centimetres
# off; measured on 6 crops: the same IoU (0.651 vs 0.652), 38% less fit time.
PHOTO_FIT = FitOptions(fit_scale=True, shape_restarts=False, surface_iterations=8, surface_weight=SILHOUETTE_WEIGHT)
# A photo fit is doubtful when its silhouette covers the person mask this poorly (IoU): the six sample photos reach
# 0.80-0.92 with the silhouette refinement and 0.72-0.86 without, held-out renders 0.85-0.92; a mask covering two
# people gives 0.32 (results_photo.md, results_reliability.md).
DOUBT_IOU = 0.6
# The detected landmarks' weight in a photo's refinement, as a share of a scan fit's (LANDMARK_WEIGHT): on 16
# held-out renders the keypoints land closer in the image at 1 / 3 / 5, the silhouette's IoU drops at 5 and more
# (results_photo.md).
PHOTO_LANDMARK_WEIGHT = 3.0
OUTLINE_PAIRS = 600  # outline vertices and mask outline pixels paired each round of the silhouette refinement


def photo_fit_options(body: BodyModel) -> FitOptions:
    """PHOTO_FIT with the body's extremities held (`lvd_core.pipeline.held_extremities`)."""
    return replace(PHOTO_FIT, **held_extremities(body))


@dataclass
class PhotoFitResult(FitResult):
    """A FitResult whose input frame is the photo frame of `crop` (the person crop the network saw)."""

    crop: PersonCrop | None = None
    mask_iou: float = float("nan")  # the fitted body's silhouette against the crop's person mask

    def quality_label(self, short: bool = False) -> str:
        if short:
            return f"IoU {self.mask_iou:.3f}" + (", check" if self.doubtful else "")
        label = f"silhouette IoU {self.mask_iou:.3f} with the person mask"
        if self.doubtful:
            label += f"; doubtful: under {DOUBT_IOU}, as when the mask holds more than one person or the pose was misread: check the fit"
        return label


def person_mask(rgb: np.ndarray, mask=None, name: str = "the image") -> np.ndarray:
    """(H, W) float32 person mask of rgb (H, W, 3) uint8: `mask` (array or file) when given, else the
    person mediapipe finds (NoPersonError, naming the photo `name`, when there is none)."""
    return find_person(rgb, name).mask if mask is None else load_mask(mask, like=rgb)


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
    progress=None, cancel: threading.Event | None = None, timings: dict | None = None, refine: bool = True,
    landmarks: bool = True,
) -> PhotoFitResult:  # fmt: skip
    """LVD and the body fit on a person crop (the part of fit_photo after the crop); refine: match the
    silhouette to the crop's person mask (and, with `landmarks`, the person detector's landmarks on the crop:
    `photo_landmarks`)."""
    timings = {} if timings is None else timings
    report_progress(progress, 0.3, "predicting vertices (LVD)", cancel)
    predicted = predict_crop(network, crop, iterations, timings)
    report_progress(progress, 0.5, "fitting the body", cancel)
    clock = time.perf_counter()
    input_from_model = photo_from_model(model)
    model_from_input = np.linalg.inv(input_from_model)
    targets = torch.as_tensor(apply_transform(model_from_input, predicted)[None], dtype=model.dtype, device=model.device)
    vertex_ids = torch.as_tensor(np.asarray(network.checkpoint_metadata["vertex_ids"]), device=model.device)
    options = photo_fit_options(model)
    fit = fit_to_vertices(model, targets, vertex_ids, options=options)
    timings["fit"] = round(time.perf_counter() - clock, 3)
    if refine:
        report_progress(progress, 0.8, "matching the silhouette to the person mask", cancel)
        found = None
        if landmarks:
            clock = time.perf_counter()
            found = photo_landmarks(model, crop, fit, input_from_model, len(vertex_ids))
            timings["landmarks"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        pairing = silhouette_pairing(model, crop.mask, input_from_model)
        fit = refine_with_pairs(model, fit, targets, [pairing], vertex_ids, options, found)
        timings["silhouette"] = round(time.perf_counter() - clock, 3)
    vertices_model = fit.vertices[0].detach().cpu().double().numpy()
    report_progress(progress, 1.0, "done", cancel)
    result = PhotoFitResult(
        body_name=model.name,
        params=fit.params.to(device="cpu"),
        input_from_model=input_from_model,
        vertices_input=apply_transform(input_from_model, vertices_model),
        lvd_vertices_input=predicted,
        lvd_vertex_ids=vertex_ids.cpu().numpy(),
        residual_mm=float(1000 * fit.residuals[0].mean()),  # model metres of a neutral-height body
        units="unitless",
        timings=timings,
        crop=crop,
    )
    result.mask_iou = silhouette_iou(result, crop.mask)
    result.doubtful = not result.mask_iou >= DOUBT_IOU
    return result


def fit_photo(
    image,
    mask=None,
    *,
    body: str = "anny",
    weights: str | Path | None = None,
    checkpoint_folder: str | Path | None = None,
    device: str = "auto",
    iterations: int | None = None,
    refine: bool = True,
    landmarks: bool = True,
    progress=None,
    cancel: threading.Event | None = None,
    **ignored,
) -> PhotoFitResult:
    """Fit `body` to the person in a photo: a path or (H, W, 3) uint8 RGB array; `mask` (path or (H, W)
    array, 1 on the person) or None to find the person with mediapipe; refine: match the fitted silhouette
    to the mask, and with `landmarks` the fitted body's landmarks to those MediaPipe Pose finds on the crop.

    progress(fraction, message) is called between stages; setting `cancel` stops at the next stage with
    FitCancelled. Raises NoPersonError when no person is found, ImageInputError / InputError /
    CheckpointError (all ValueError) with a one-line message for unusable input.
    """
    if weights is None and body in TRANSFERRED_BODIES:  # no network of its own: Anny's fit, then the user's model to it
        target = load_body_model(body, ignored.get("model_path"))
        anny = fit_photo(image, mask, body=source_model(target), checkpoint_folder=checkpoint_folder, device=device,
                         iterations=iterations, refine=refine, landmarks=landmarks, progress=progress, cancel=cancel)  # fmt: skip
        return transferred([anny], target)[0]
    lap = StageTimer()
    report_progress(progress, 0.0, "finding the person", cancel)
    rgb = load_image(image)
    person = person_mask(rgb, mask, "the image" if isinstance(image, np.ndarray) else str(image))
    lap("mask")
    crop = crop_person(rgb, person)
    lap("crop")
    torch_device = pick_device(device)
    chosen = resolve_weights(body, weights, checkpoint_folder, defaults=DEFAULT_PHOTO_WEIGHTS, kind="photo",
                             no_default="fit photos with body 'anny'")  # fmt: skip
    network = load_network(chosen, torch_device)
    if not isinstance(network, CompactImageLVD):
        raise InputError(f"{weights} is not a photo network (CompactImageLVD): pass a photo checkpoint with --weights")
    if network.checkpoint_metadata.get("body") != body:
        raise InputError(f"the checkpoint was trained for the {network.checkpoint_metadata.get('body')} body model, not {body}")
    model = load_body_model(body, device=torch_device)
    lap("network")
    return fit_crop(network, model, crop, iterations or DESCENT_ITERATIONS, progress, cancel, lap.timings, refine, landmarks)


def photo_landmarks(model: BodyModel, crop: PersonCrop, fit, input_from_model: np.ndarray, vertex_count: int) -> LandmarkTargets | None:
    """The person detector's landmarks on the crop as targets for the fitted body's (lvd_core.landmarks.regressor),
    model frame: each at its detected place in the image and at the depth the fit gives it (a photo has none).
    None when the detector finds no person or the model has no landmark regressor."""
    marks = detect_image(crop.image)
    regressor = fit_landmarks(model)
    if marks is None or regressor is None:
        return None
    matrix, names = regressor[0], regressor[1]
    fitted = apply_transform(input_from_model, (matrix @ fit.vertices[0].to(matrix.dtype)).detach().cpu().double().numpy())
    points = np.full((len(NAMES), 3), np.nan)
    rows = [INDEX[name] for name in names]
    points[rows, :2] = pixels_to_photo(marks[rows, :2], crop.mask.shape[0])
    points[rows, 2] = fitted[:, 2]
    targets = landmark_targets(model, apply_transform(np.linalg.inv(input_from_model), points), marks[:, 2], vertex_count)
    return replace(targets, weights=PHOTO_LANDMARK_WEIGHT * targets.weights)


# ---------------------------------------------------------------------------------------------------------
# silhouettes


def crop_pixels(photo_points: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) photo-frame points -> (N, 2) continuous pixel coordinates (u right, v down) of a size x size crop
    (the crop spans [-1, 1]; pixel (c, r) has its centre at (c + 0.5, r + 0.5))."""
    return np.stack([(photo_points[:, 0] + 1) * size / 2, (1 - photo_points[:, 1]) * size / 2], axis=1)


def pixels_to_photo(pixels: np.ndarray, size: int) -> np.ndarray:
    """(N, 2) pixel coordinates of a size x size crop -> (N, 2) photo-frame x, y (the inverse of crop_pixels)."""
    return np.stack([2 * pixels[:, 0] / size - 1, 1 - 2 * pixels[:, 1] / size], axis=1)


def body_silhouette(vertices_photo: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: the crop pixels covered by a mesh given in the photo frame (V, 3)."""
    face_map, _ = rasterize(crop_pixels(vertices_photo, size), -vertices_photo[:, 2], faces, size)
    return (face_map >= 0).reshape(size, size)


def outline(region: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool: the region's pixels with a 4-neighbour outside it."""
    from scipy import ndimage

    return region & ~ndimage.binary_erosion(region, border_value=0)


def silhouette_pairing(body: BodyModel, crop_mask: np.ndarray, input_from_model: np.ndarray, seed: int = 0):
    """The pairing of `lvd_core.fit.refine_with_pairs` that matches the body's silhouette to a person mask
    (S, S) of the crop, two-way in the image plane: body vertices on the silhouette's outline go to the
    nearest mask-outline pixel, and mask-outline pixels pull the nearest outline vertex. A goal moves its
    vertex across the image only (its depth is kept); goals are in the model frame."""
    from scipy.spatial import cKDTree

    size = crop_mask.shape[0]
    faces = np.asarray(body.faces, dtype=np.int64)
    rows, columns = np.nonzero(outline(np.asarray(crop_mask) >= 0.5))
    mask_outline = np.stack([columns, rows], axis=1) + 0.5  # pixel centres
    rng = np.random.default_rng(seed)
    mask_outline = mask_outline[rng.permutation(len(mask_outline))[:OUTLINE_PAIRS]]
    model_from_input = np.linalg.inv(input_from_model)

    def pairs(current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        photo = apply_transform(input_from_model, current)
        pixels = crop_pixels(photo, size)
        column, row = np.floor(pixels).astype(np.int64).T
        inside = (column >= 0) & (column < size) & (row >= 0) & (row < size)
        on_outline = np.zeros(len(photo), bool)
        on_outline[inside] = outline(body_silhouette(photo, faces, size))[row[inside], column[inside]]
        outline_ids = np.flatnonzero(on_outline)
        outline_ids = outline_ids[rng.permutation(len(outline_ids))[:OUTLINE_PAIRS]]
        if len(outline_ids) == 0 or len(mask_outline) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 3))
        to_mask = mask_outline[cKDTree(mask_outline).query(pixels[outline_ids])[1]]
        from_mask = outline_ids[cKDTree(pixels[outline_ids]).query(mask_outline)[1]]
        ids = np.concatenate([outline_ids, from_mask])
        goals = photo[ids].copy()
        goals[:, :2] = pixels_to_photo(np.concatenate([to_mask, mask_outline]), size)
        return ids, apply_transform(model_from_input, goals)

    return pairs


def silhouette(result: FitResult, size: int) -> np.ndarray:
    """(size, size) bool: the pixels of a size x size crop that the fitted body covers."""
    faces = np.asarray(load_body_model(result.body_name).faces, dtype=np.int64)
    return body_silhouette(result.vertices_input, faces, size)


def silhouette_iou(result: FitResult, crop_mask: np.ndarray) -> float:
    """Intersection over union of the fitted body's silhouette and a person mask of the crop (S, S) (>= 0.5
    is the person), e.g. `result.crop.mask`."""
    body = silhouette(result, crop_mask.shape[0])
    person = np.asarray(crop_mask) >= 0.5
    return float((body & person).sum() / max((body | person).sum(), 1))
