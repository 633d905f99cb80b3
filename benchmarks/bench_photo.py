"""Times fit_photo stage by stage on the sample photos and measures the fitted silhouette; writes results_photo.md.

Run: .venv/bin/python benchmarks/bench_photo.py [--weights weights/anny-body-photo/checkpoint.pt]
Each photo is fitted twice: with its given mask, and with the automatic (mediapipe) mask. IoU: the fitted
body's silhouette against the mask the crop was made from (the given one, or mediapipe's).
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvd_core.photo import fit_photo, silhouette_iou  # noqa: E402
from lvd_core.checkpoints import WEIGHTS_DIR  # noqa: E402

IMAGES = Path(os.environ.get("LVD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "images"
RESULTS = Path(__file__).with_name("results_photo.md")
STAGES = ("mask", "crop", "network", "encode", "descent", "fit", "silhouette")


def fitted_row(path: Path, mask_path: Path | None, weights: Path) -> dict:
    """Stage seconds, total seconds, IoU and LVD-vs-fit residual of one fit_photo call."""
    start = time.perf_counter()
    result = fit_photo(path, mask_path, weights=weights, device="cpu")
    return dict(result.timings, total=time.perf_counter() - start, iou=silhouette_iou(result, result.crop.mask), residual_mm=result.residual_mm)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "anny-body-photo" / "checkpoint.pt")
    weights = parser.parse_args().weights
    if not IMAGES.is_dir():
        sys.exit(f"sample photos not found in {IMAGES}")
    torch.set_num_threads(1)
    fit_photo(IMAGES / "img1.png", weights=weights, device="cpu")  # warm up: mediapipe, the network, the body model

    lines = [
        "# Photo fit: stage times and silhouette IoU", "",
        f"`benchmarks/bench_photo.py`, one run per photo after a warm-up call, {platform.machine()}, "
        f"{os.cpu_count()} cores, 1 torch thread, Python {platform.python_version()}, checkpoint `{weights}`.",
        "Stages in ms: mask (loading the given mask, or mediapipe), crop, network (cached load), encode, descent "
        "(5 iterations, 1,024 vertices), fit (body fit to the predicted vertices, with scale), silhouette (its refinement "
        "against the person mask).",
        "IoU: the fitted body's silhouette against the crop's mask; residual: mean LVD-to-fit distance (mm of a "
        "neutral-height body).", "",
        "| photo | mask from | " + " | ".join(STAGES) + " | total ms | IoU | residual mm |",
        "|---|---|" + "---|" * len(STAGES) + "---|---|---|",
    ]  # fmt: skip
    ious = {"given": [], "mediapipe": []}
    for path in sorted(IMAGES.glob("img[0-9].png")):
        for kind, mask_path in (("given", path.with_name(f"{path.stem}_mask.png")), ("mediapipe", None)):
            row = fitted_row(path, mask_path, weights)
            ious[kind].append(row["iou"])
            stage_ms = " | ".join(f"{1000 * row[s]:.0f}" for s in STAGES)
            lines.append(f"| {path.name} | {kind} | {stage_ms} | {1000 * row['total']:.0f} | {row['iou']:.3f} | {row['residual_mm']:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", "Mean IoU: " + ", ".join(f"{kind} masks {np.mean(values):.3f}" for kind, values in ious.items()) + "."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
