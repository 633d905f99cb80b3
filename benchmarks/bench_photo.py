"""The photo fit: stage by stage on the sample photos, and the detector's landmarks in it on held-out renders;
writes results_photo.md.

Run: .venv/bin/python benchmarks/bench_photo.py [--renders 16]
Sample photos: each fitted with its given mask and with the automatic (mediapipe) mask; IoU: the fitted body's
silhouette against the mask the crop was made from. Held-out renders (the validation seed's bodies, random
clothes, light and background): each fitted without the detected landmarks in the silhouette refinement and
with them at several weights (photo.PHOTO_LANDMARK_WEIGHT); IoU against the render's mask, and the error of
the fitted body's COCO keypoints (the model's own regressor) against the true body's, in the photo's pixels.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lvd_core import photo  # noqa: E402
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.checkpoints import WEIGHTS_DIR  # noqa: E402
from lvd_core.photo import crop_pixels, fit_photo, silhouette_iou  # noqa: E402
from lvd_core.synth import held_out_set, render_photo  # noqa: E402
from lvd_core.synth.renders import project  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

IMAGES = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data")) / "images"
STAGES = ("mask", "crop", "network", "encode", "descent", "fit", "landmarks", "silhouette")
LANDMARK_WEIGHTS = (1.0, 3.0, 5.0)


def sample_rows() -> list[str]:
    """One table row per sample photo and mask source; the mean IoUs last."""
    rows, ious = [], {"given": [], "mediapipe": []}
    for path in sorted(IMAGES.glob("img[0-9].png")):
        for kind, mask_path in (("given", path.with_name(f"{path.stem}_mask.png")), ("mediapipe", None)):
            start = time.perf_counter()
            result = fit_photo(path, mask_path, device="cpu")
            total = time.perf_counter() - start
            iou = silhouette_iou(result, result.crop.mask)
            ious[kind].append(iou)
            stage_ms = " | ".join(f"{1000 * result.timings.get(s, 0.0):.0f}" for s in STAGES)
            rows.append(f"| {path.name} | {kind} | {stage_ms} | {1000 * total:.0f} | {iou:.3f} | {result.residual_mm:.1f} |")
            print(rows[-1], flush=True)
    without = [fit_photo(path, path.with_name(f"{path.stem}_mask.png"), device="cpu", landmarks=False).mask_iou
               for path in sorted(IMAGES.glob("img[0-9].png"))]  # fmt: skip
    return rows + ["", "Mean IoU: " + ", ".join(f"{kind} masks {np.mean(values):.3f}" for kind, values in ious.items())
                   + f"; given masks without the landmarks {np.mean(without):.3f}."]  # fmt: skip


def render_rows(count: int) -> list[str]:
    """Mean IoU and keypoint error (px) on `count` held-out renders, per landmark weight (none first)."""
    body = load_body_model("anny")
    coco = body.landmark_regressor()[0].double().numpy()
    renders = [render_photo(body, scan.params, np.random.default_rng(k)) for k, scan in enumerate(held_out_set("anny", count))]
    rows = []
    for weight in (0.0, *LANDMARK_WEIGHTS):
        photo.PHOTO_LANDMARK_WEIGHT = weight
        scores = []
        for render in renders:
            result = fit_photo(render.image, render.mask, device="cpu", landmarks=weight > 0)
            fitted = result.crop.transform.crop_to_photo(crop_pixels(result.vertices_input, result.crop.mask.shape[0]))
            truth, _ = project(render.camera, coco @ render.vertices_gt.astype(np.float64))
            error = np.linalg.norm(coco @ fitted - truth, axis=1)
            scores.append((result.mask_iou, error.mean(), np.median(error)))
        iou, mean, median = np.mean(scores, axis=0)
        rows.append(f"| {'none' if weight == 0 else f'{weight:g}'} | {iou:.3f} | {mean:.2f} | {median:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--renders", type=int, default=16, help="held-out renders for the landmarks' table")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        sys.exit(f"sample photos not found in {IMAGES}")
    torch.set_num_threads(1)
    fit_photo(IMAGES / "img1.png", device="cpu")  # warm up: mediapipe, the network, the body model
    chosen = photo.PHOTO_LANDMARK_WEIGHT
    samples = sample_rows()
    renders = render_rows(args.renders)
    photo.PHOTO_LANDMARK_WEIGHT = chosen
    lines = [
        "# Photo fit: stage times, silhouette IoU, landmarks",
        "",
        f"`benchmarks/bench_photo.py {' '.join(sys.argv[1:])}`; "
        f"{provenance([WEIGHTS_DIR / 'anny-body-photo' / 'checkpoint.pt', WEIGHTS_DIR / 'anny' / 'anny-landmarks.npz'])} "
        f"CPU, 1 torch thread, load average {os.getloadavg()[0]:.1f} when run.",
        "",
        "The sample photos, one run each after a warm-up call. Stages in ms: mask (loading the given mask, or",
        "mediapipe), crop, network (cached load), encode, descent (5 iterations, 1,024 vertices), fit (body fit to the",
        "predicted vertices, with scale), landmarks (MediaPipe Pose on the crop), silhouette (the refinement against",
        "the person mask and the landmarks). IoU: the fitted body's silhouette against the crop's mask; residual: mean",
        "LVD-to-fit distance (mm of a neutral-height body).",
        "",
        "| photo | mask from | " + " | ".join(STAGES) + " | total ms | IoU | residual mm |",
        "|---|---|" + "---|" * len(STAGES) + "---|---|---|",
        *samples,
        "",
        f"Held-out renders ({args.renders}, 256 px, given masks): the detector's landmarks in the silhouette refinement",
        f"at each weight (a share of a scan fit's; the default is {chosen:g}). IoU against the render's mask; keypoint",
        "error: the fitted body's COCO keypoints against the true body's, in the photo's pixels, mean / median.",
        "",
        "| landmark weight | IoU | keypoints mean px | keypoints median px |",
        "|---|---|---|---|",
        *renders,
        "",
    ]
    write_results("photo", lines)


if __name__ == "__main__":
    main()
