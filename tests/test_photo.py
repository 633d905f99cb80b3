"""The photo path: the photo frame, the compact image network, its training loop, fit_photo and silhouettes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lvd_core.body import load_body_model
from lvd_core.checkpoints import load_checkpoint
from lvd_core.inputs.image import crop_person
from lvd_core.nets.base import diagonal_of_all_offsets
from lvd_core.nets.compact_image import PERSON_UNITS, CompactImageLVD, PhotoFrame
from lvd_core.inputs.frame import apply_transform
from lvd_core.landmarks.detect import INDEX, detect_image
from lvd_core.landmarks.regressor import fit_landmarks
from lvd_core.photo import NoPersonError, crop_pixels, fit_photo, photo_landmarks, silhouette_iou
from lvd_core.checkpoints import WEIGHTS_DIR
from lvd_core.results import FitResult
from lvd_core.synth.dataset import BodySampling
from lvd_core.train_image import ImageTrainConfig, synthetic_photo, train

WEIGHTS = WEIGHTS_DIR / "anny-body-photo" / "checkpoint.pt"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="the trained photo network is not there")
# Measured with the shipped checkpoint (weights/anny-body-photo/manifest.json) and the silhouette refinement: this
# test's render 0.922 (0.848 without the refinement); the 6 real photos with their given masks 0.802-0.911 (mean
# 0.854; 0.72-0.86 without). The floors sit ~0.06-0.1 below the measured values so a changed fit or platform
# maths passes while a broken frame, crop, network or refinement (IoU ~0.3-0.5) fails.
SYNTHETIC_IOU_FLOOR = 0.85
REAL_IOU_FLOOR = 0.72


@pytest.fixture(scope="module")
def render():
    """A held-out style synthetic photo, its crop and its PhotoFrame."""
    photo, _ = synthetic_photo(load_body_model("anny"), 7, 3, BodySampling(yaw_range_deg=45))
    crop = crop_person(photo.image, photo.mask)
    return photo, crop, PhotoFrame.of(photo.camera, crop.transform, photo.vertices_gt)


def test_photo_frame_round_trip_and_scale(render):
    photo, crop, frame = render
    points = frame.from_model(photo.vertices_gt)
    assert np.allclose(frame.to_model(points), photo.vertices_gt, atol=1e-6)
    assert abs(points[:, 2].mean()) < 1e-9  # depth relative to the body's centre
    assert np.ptp(points[:, :2], axis=0).max() == pytest.approx(PERSON_UNITS, rel=0.02)  # the paper's crop


def test_silhouette_of_the_true_body_matches_the_render_mask(render):
    photo, crop, frame = render
    truth = frame.from_model(photo.vertices_gt)
    result = FitResult("anny", photo.params, np.eye(4), truth, truth, np.arange(len(truth)), 0.0, "unitless")
    assert silhouette_iou(result, crop.mask) > 0.95  # only the resampled mask's edge pixels differ


def test_own_offsets_equal_the_full_outputs_diagonal():
    torch.manual_seed(0)
    net = CompactImageLVD(30, template=(torch.rand(30, 3) - 0.5).tolist(), channels=(4, 4, 8, 8, 8),
                          global_width=8, embed_width=8, hidden=16).eval()
    with torch.no_grad():
        features = net.encode(torch.randn(2, 4, 256, 256))
        points = torch.rand(2, 30, 3) * 2 - 1
        own = net.predict_own_offsets(features, points)
        full = net.predict_all_offsets(features, points)
    assert full.shape == (2, 30, 30, 3)
    assert torch.allclose(own, diagonal_of_all_offsets(full), atol=1e-5)


def test_training_smoke_resumes_and_saves_a_loadable_checkpoint(tmp_path):
    config = ImageTrainConfig(out=str(tmp_path), subset=32, steps=3, batch=1, pairs=64, workers=0,
                              validate_every=0, network=dict(channels=[4, 4, 8, 8, 8], global_width=8, embed_width=8, hidden=16))
    train(config, log=lambda message: None)
    network = load_checkpoint(tmp_path / "checkpoint.pt", device="cpu")
    assert isinstance(network, CompactImageLVD) and network.checkpoint_metadata["steps"] == 3
    assert all(torch.isfinite(p).all() for p in network.parameters())
    config.steps = 4
    lines = []
    train(config, log=lines.append)
    assert lines[0] == "resuming at step 3"
    assert load_checkpoint(tmp_path / "checkpoint.pt", device="cpu").checkpoint_metadata["steps"] == 4


@needs_weights
@pytest.mark.slow
def test_fit_photo_on_a_synthetic_render(render):
    photo, crop, _ = render
    result = fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu")
    assert result.units == "unitless" and result.vertices_input.shape == (13718, 3)
    model = load_body_model("anny")
    with torch.no_grad():
        vertices_model = model(result.params.to(dtype=model.dtype)).vertices[0].double().numpy()
    mapped = vertices_model @ result.input_from_model[:3, :3].T + result.input_from_model[:3, 3]
    assert np.allclose(mapped, result.vertices_input, atol=1e-4)
    assert silhouette_iou(result, crop.mask) >= SYNTHETIC_IOU_FLOOR
    assert result.mask_iou == pytest.approx(silhouette_iou(result, crop.mask))
    assert result.quality_label().startswith("silhouette IoU")


@needs_weights
@pytest.mark.slow
def test_silhouette_refinement_brings_the_outline_onto_the_mask(render):
    photo, crop, _ = render
    plain = fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu", refine=False)
    refined = fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu")
    assert refined.mask_iou > plain.mask_iou + 0.03  # measured 0.848 -> 0.922
    assert "silhouette" in refined.timings and "silhouette" not in plain.timings


def test_the_photos_landmarks_are_targets_where_the_detector_sees_them(render):
    """Each confident landmark's target lies at its detected pixel of the crop, at the fitted body's depth there."""
    photo, crop, _ = render
    result = fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu", refine=False)
    model = load_body_model("anny")
    with torch.no_grad():
        fit = model(result.params.to(dtype=model.dtype))
    targets = photo_landmarks(model, crop, fit, result.input_from_model, 1024)
    marks = detect_image(crop.image)
    seen = targets.weights[0].numpy() > 0
    assert seen.sum() >= 8  # the shoulders, hips, knees and more of a person facing the camera
    in_photo = apply_transform(result.input_from_model, targets.targets[0].double().numpy())
    names = [INDEX[name] for name in fit_landmarks(model)[1]]
    np.testing.assert_allclose(crop_pixels(in_photo, crop.mask.shape[0])[seen], marks[names][seen, :2], atol=1e-3)
    fitted = apply_transform(result.input_from_model, (targets.regressor @ fit.vertices[0].to(targets.regressor.dtype)).double().numpy())
    np.testing.assert_allclose(in_photo[seen, 2], fitted[seen, 2], atol=1e-4)
    landmarked = fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu")
    assert "landmarks" in landmarked.timings and "landmarks" not in fit_photo(photo.image, photo.mask, weights=WEIGHTS, device="cpu", landmarks=False).timings


@needs_weights
@pytest.mark.slow
def test_fit_photo_on_real_photos_with_their_masks(shared_data):
    images = sorted((shared_data / "images").glob("img[0-9].png"))
    assert images
    ious = {}
    for image in images:
        result = fit_photo(image, image.with_name(image.stem + "_mask.png"), weights=WEIGHTS, device="cpu")
        ious[image.stem] = silhouette_iou(result, result.crop.mask)
        assert not result.doubtful, image.name
    assert min(ious.values()) >= REAL_IOU_FLOOR, ious
    assert np.mean(list(ious.values())) >= 0.80, ious  # the aim (measured 0.854)


@needs_weights
@pytest.mark.slow
def test_a_mask_of_two_people_makes_a_doubtful_fit(shared_data):
    """The body cannot cover two people: its IoU falls far under the real photos' (0.26 measured), and the fit
    says so instead of passing for a good one."""
    from PIL import Image

    photo = np.asarray(Image.open(shared_data / "images" / "img2.png").convert("RGB"))
    mask = np.asarray(Image.open(shared_data / "images" / "img2_mask.png").convert("L")) / 255.0
    side_by_side = lambda pixels: np.concatenate([pixels, pixels], axis=1)  # noqa: E731
    result = fit_photo(side_by_side(photo), side_by_side(mask).astype(np.float32), weights=WEIGHTS, device="cpu")
    assert result.doubtful and result.mask_iou < 0.6
    assert result.quality_label(short=True).endswith(", check") and "doubtful" in result.quality_label()


def test_a_grey_image_has_no_person():
    with pytest.raises(NoPersonError):
        fit_photo(np.full((256, 256, 3), 128, np.uint8), weights=Path("unused.pt"))
