"""Train the compact image LVD network on synthetic photos: `python -m lvd_core.train_image --minutes M`.

Each step: B synthetic photos (a DataLoader worker renders them, `lvd_core.synth.renders.render_photo`:
random body, pose, clothes colours, light, background; the body turned up to +-yaw_range_deg from facing the
camera, so side-ish views are included), colour-jittered, their masks grown or shrunk by a pixel or two (real
masks are not exact), cropped exactly as a user's photo is (`crop_person` on the mask), and P (query point,
vertex) pairs in the photo frame (`lvd_core.nets.compact_image`) supervised with L1 on the clamped offset, the
pairs drawn as for scans (`lvd_core.train.sample_pairs`).

The learning rate is constant, then decays linearly to 0 over the second half of the run, the run's length
being `steps` or `minutes` (whichever ends first). Resumable like the scan training: `train_state.pt` beside
the checkpoint holds the optimiser and the step, and the data stream resumes at the next sample index
(a resumed `--minutes` run starts a new learning-rate schedule).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .body import load_body_model
from .canonical import farthest_point_subset, rest_template
from .checkpoints import load_checkpoint
from .devices import PRECISIONS
from .inputs.image import crop_person, network_image
from .nets.compact_image import CompactImageLVD, PhotoFrame, photo_template
from .photo import DESCENT_ITERATIONS, fit_crop, predict_crop, silhouette_iou
from .synth.dataset import VALIDATION_SEED, BodySampling, sample_params
from .synth.renders import SyntheticPhoto, render_photo
from .train import TrainConfig, run_training, sample_pairs, write_manifest


@dataclass
class ImageTrainConfig(TrainConfig):
    out: str = "weights/anny-body-photo"
    clamp: float = 0.35  # photo units (a 1.7 m body is 1.82 units): 33 cm, the paper's 30 / 173 of the height
    yaw_range_deg: float = 45.0  # photos show people from the front or half side
    box: float = 1.0  # uniform query points: the crop's square, +-1 in depth
    # Photo poses: every family but "random" (joints anywhere within their limits: rare in photos, and the
    # hardest to learn in a CPU budget).
    families: tuple = ("standing", "a_pose", "t_pose", "walking", "running", "arms_raised", "arms_crossed", "sitting", "crouching", "leaning")
    checkpoint_every: int = 100
    validate_every: int = 500


# ---------------------------------------------------------------------------------------------------------
# examples


def body_sampling(config: ImageTrainConfig) -> BodySampling:
    return BodySampling(yaw_range_deg=config.yaw_range_deg, families=tuple(config.families))


def synthetic_photo(body, seed: int, index: int, sampling: BodySampling) -> tuple[SyntheticPhoto, np.random.Generator]:
    """Photo `index` of stream `seed` (depends only on both) and its generator, for the example's other draws."""
    rng = np.random.default_rng([seed, index])
    return render_photo(body, sample_params(body, rng, 1, sampling), rng), rng


def jitter_colours(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 -> the same with random brightness, contrast, saturation, per-channel gain and gamma."""
    colours = image.astype(np.float32) / 255.0
    grey = colours.mean(axis=2, keepdims=True)
    colours = grey + rng.uniform(0.6, 1.4) * (colours - grey)  # saturation
    colours = colours.mean() + rng.uniform(0.7, 1.3) * (colours - colours.mean())  # contrast
    colours = colours * rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, size=3)  # brightness, white balance
    colours = np.clip(colours, 0, 1) ** rng.uniform(0.8, 1.25)
    return (colours * 255 + 0.5).astype(np.uint8)


def jitter_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) mask grown or shrunk by 1-2 px half of the time, as an imperfect segmentation would be."""
    if rng.uniform() < 0.5:
        return mask
    kernel = np.ones((2 * rng.integers(1, 3) + 1,) * 2, np.uint8)
    return (cv2.dilate if rng.uniform() < 0.5 else cv2.erode)(mask, kernel)


def make_photo_example(photo: SyntheticPhoto, rng, vertex_ids: np.ndarray, template: np.ndarray, config: ImageTrainConfig):
    """(network image (4, 256, 256), query points (P, 3), vertex ids (P,), clamped targets (P, 3)), photo frame."""
    crop = crop_person(jitter_colours(photo.image, rng), jitter_mask(photo.mask, rng))
    frame = PhotoFrame.of(photo.camera, crop.transform, photo.vertices_gt)
    gt = frame.from_model(photo.vertices_gt[vertex_ids])
    queries, vertex = sample_pairs(rng, gt, template, config.pairs, config.box, config.travel_share)
    targets = np.clip(queries - gt[vertex], -config.clamp, config.clamp)
    return network_image(crop, with_mask=True), torch.from_numpy(queries), torch.from_numpy(vertex), torch.from_numpy(targets.astype(np.float32))


class TrainingPhotos(torch.utils.data.IterableDataset):
    """Endless training examples from sample index `start` on, split across workers by index."""

    def __init__(self, config: ImageTrainConfig, vertex_ids: np.ndarray, template: np.ndarray, start: int):
        super().__init__()
        self.config, self.vertex_ids, self.template, self.start = config, vertex_ids, template, start

    def __iter__(self):
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        body = load_body_model(self.config.body)
        sampling = body_sampling(self.config)
        index = self.start + worker
        while True:
            photo, rng = synthetic_photo(body, self.config.seed, index, sampling)
            yield make_photo_example(photo, rng, self.vertex_ids, self.template, self.config)
            index += workers


# ---------------------------------------------------------------------------------------------------------
# validation


def held_out_photos(config: ImageTrainConfig):
    """The fixed validation photos (a seed training never uses): yields (photo, its crop, its PhotoFrame)."""
    body = load_body_model(config.body)
    sampling = body_sampling(config)
    for index in range(config.validation_size):
        photo, _ = synthetic_photo(body, VALIDATION_SEED, index, sampling)
        crop = crop_person(photo.image, photo.mask)
        yield photo, crop, PhotoFrame.of(photo.camera, crop.transform, photo.vertices_gt)


def validate(network: CompactImageLVD, config: ImageTrainConfig, vertex_ids: np.ndarray,
             iterations: int = DESCENT_ITERATIONS, with_fit: bool = False) -> dict:
    """Held-out renders: subset vertex error after the descent in mm (photo-frame error over the frame's units
    per metre at the body's centre), also split into the image plane (x, y) and depth (z); with_fit also fits
    the body and adds its silhouette IoU with the mask."""
    network.eval()
    offsets, ious = [], []  # (N, 3) mm per photo
    body = load_body_model(config.body)
    for photo, crop, frame in held_out_photos(config):
        if with_fit:
            result = fit_crop(network, body, crop, iterations)
            predicted = result.lvd_vertices_input
            ious.append(silhouette_iou(result, crop.mask))
        else:
            predicted = predict_crop(network, crop, iterations)
        gt = frame.from_model(photo.vertices_gt[vertex_ids])
        offsets.append((predicted - gt) / frame.units_per_metre * 1000)
    network.train()
    offsets = np.concatenate(offsets)
    errors = np.linalg.norm(offsets, axis=1)
    metrics = {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)), "p90_mm": float(np.percentile(errors, 90)),
               "image_plane_mean_mm": float(np.linalg.norm(offsets[:, :2], axis=1).mean()), "depth_mean_mm": float(np.abs(offsets[:, 2]).mean())}
    if ious:
        metrics.update(iou_mean=float(np.mean(ious)), iou_min=float(np.min(ious)))
    return metrics


# ---------------------------------------------------------------------------------------------------------
# the loop


def build_network(config: ImageTrainConfig) -> tuple[CompactImageLVD, np.ndarray]:
    """A fresh network for config.body and its vertex subset; its template is the rest body in the photo frame."""
    body = load_body_model(config.body)
    rest = rest_template(body)
    vertex_ids = farthest_point_subset(rest, config.subset)
    template = photo_template(rest, body.up_axis)[vertex_ids]
    return CompactImageLVD(config.subset, template=template.tolist(), **config.network), vertex_ids


def train(config: ImageTrainConfig, log=print) -> Path:
    """Train (or resume) the photo network and return the checkpoint path (`lvd_core.train.run_training`)."""
    check = lambda network, config, vertex_ids, template: validate(network, config, vertex_ids)  # noqa: E731
    return run_training(config, build_network, TrainingPhotos, check, "photo", log)


# ---------------------------------------------------------------------------------------------------------
# evaluation and manifest


def real_photo_ious(weights: Path, folder: Path) -> dict:
    """{name: silhouette IoU} of fit_photo on img<N>.png in folder with their given img<N>_mask.png."""
    from .photo import fit_photo

    ious = {}
    for image in sorted(folder.glob("img[0-9]*.png")):
        if not image.stem.endswith("_mask"):
            result = fit_photo(image, image.with_name(image.stem + "_mask.png"), weights=weights, device="cpu")
            ious[image.stem] = round(silhouette_iou(result, result.crop.mask), 3)
    return ious


def evaluate(checkpoint: Path, config: ImageTrainConfig, real_photos: Path | None) -> dict:
    """The manifest's quality figures: held-out renders after the descent (5 and 10 iterations) and after the
    body fit (with silhouette IoU), and the real photos' IoU with their given masks when the folder exists."""
    network = load_checkpoint(checkpoint, device="cpu")
    vertex_ids = np.asarray(network.checkpoint_metadata["vertex_ids"])
    quality = {
        "held_out_renders": config.validation_size,
        "descent_5_iterations": validate(network, config, vertex_ids, iterations=5),
        "descent_10_iterations": validate(network, config, vertex_ids, iterations=10),
        "descent_and_fit": validate(network, config, vertex_ids, with_fit=True),
    }
    if real_photos is not None and real_photos.is_dir():
        ious = real_photo_ious(checkpoint, real_photos)
        quality["real_photos_given_masks_iou"] = {"mean": round(float(np.mean(list(ious.values()))), 3), "per_photo": ious}
    return quality


def write_photo_manifest(checkpoint: Path, quality: dict, notes: str = "") -> Path:
    """The scan manifest (`lvd_core.train.write_manifest`) with the photo network's input and data recipe."""
    path = write_manifest(checkpoint, quality, notes)
    manifest = json.loads(path.read_text())
    settings = load_checkpoint(checkpoint, device="cpu").checkpoint_metadata["train_config"]
    manifest["input"] = ("photo: RGB + person mask, the paper's 256 x 256 crop (1.1 x the person box); photo frame "
                         "x right, y up, z towards the camera, crop spanning [-1, 1] (lvd_core.nets.compact_image)")
    manifest["data_recipe"] = {
        "generator": "lvd_core.synth.renders.render_photo (CPU z-buffer, Lambert shading, random clothes colours, "
                     "skin, light, plain / gradient / noise backgrounds, sensor noise; camera 2.5-8 m in front)",
        "augmentation": "colour jitter (saturation, contrast, brightness, white balance, gamma); mask grown or "
                        "shrunk by 1-2 px half of the time; crop from the mask as at inference",
        "poses": "lvd_core.synth.poses families " + ", ".join(settings["families"]),
        "shapes": "anny SimpleShapeDistribution (adults)", "facing_yaw_range_deg": settings["yaw_range_deg"],
        "seed": settings["seed"], "pairs_per_photo": settings["pairs"], "clamp": settings["clamp"],
    }  # fmt: skip
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this much wall time")
    parser.add_argument("--out", default=ImageTrainConfig.out)
    parser.add_argument("--steps", type=int, default=ImageTrainConfig.steps)
    parser.add_argument("--workers", type=int, default=ImageTrainConfig.workers)
    parser.add_argument("--threads", type=int, default=ImageTrainConfig.threads)
    parser.add_argument("--validate-every", type=int, default=ImageTrainConfig.validate_every)
    parser.add_argument("--precision", default=ImageTrainConfig.precision, choices=PRECISIONS)
    parser.add_argument("--evaluate", type=Path, metavar="REAL_PHOTOS", default=None,
                        help="instead of training: evaluate the checkpoint in --out (renders, and the img<N>.png + "
                             "img<N>_mask.png photos in this folder) and write its manifest.json")
    parser.add_argument("--notes", default="", help="the manifest's notes (with --evaluate)")
    args = parser.parse_args(argv)
    config = ImageTrainConfig(out=args.out, steps=args.steps, minutes=args.minutes, workers=args.workers,
                              threads=args.threads, validate_every=args.validate_every, precision=args.precision)
    torch.set_num_threads(config.threads)
    if args.evaluate:
        checkpoint = Path(config.out) / "checkpoint.pt"
        print(write_photo_manifest(checkpoint, evaluate(checkpoint, config, args.evaluate), args.notes).read_text())
    else:
        train(config)


if __name__ == "__main__":
    main()
