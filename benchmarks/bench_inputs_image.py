"""Times the photo pipeline (load, automatic mask, crop) on the sample photos; writes results_inputs_image.md.

Run: .venv/bin/python benchmarks/bench_inputs_image.py [--repeats 5]
Each photo is also pasted off-centre on a 640 x 480 noise canvas, the harder case of a real photo.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvd_core.inputs.image import crop_person, load_image, load_mask  # noqa: E402
from lvd_core.inputs.person_mask import find_person  # noqa: E402

IMAGES = Path(os.environ.get("LVD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "images"
RESULTS = Path(__file__).with_name("results_inputs_image.md")
CANVAS_HEIGHT, CANVAS_WIDTH = 480, 640


def median_ms(step, repeats):
    """(median wall time in ms, the step's last result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def iou(a, b):
    a, b = a >= 0.5, b >= 0.5
    return (a & b).sum() / (a | b).sum()


def paste_off_centre(rgb, mask, rng):
    """The person blended onto a noise canvas, right of centre; returns the canvas and its true mask."""
    canvas = rng.integers(0, 256, (CANVAS_HEIGHT, CANVAS_WIDTH, 3), dtype=np.uint8)
    true_mask = np.zeros((CANVAS_HEIGHT, CANVAS_WIDTH), np.float32)
    height, width = mask.shape
    top, left = CANVAS_HEIGHT - height - 20, CANVAS_WIDTH - width - 20
    region = (slice(top, top + height), slice(left, left + width))
    canvas[region] = rgb * mask[:, :, None] + canvas[region] * (1 - mask[:, :, None])
    true_mask[region] = mask
    return canvas, true_mask


def crop_box(crop):
    """(height, centre x, centre y) of the mask box in the crop, in crop pixels."""
    rows = np.flatnonzero((crop.mask >= 0.5).any(axis=1))
    cols = np.flatnonzero((crop.mask >= 0.5).any(axis=0))
    return rows[-1] + 1 - rows[0], (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    if not IMAGES.is_dir():
        sys.exit(f"sample photos not found in {IMAGES}")

    start = time.perf_counter()
    find_person(load_image(IMAGES / "img1.png"))  # imports mediapipe and builds the Pose graph
    first_call_ms = (time.perf_counter() - start) * 1000

    rng = np.random.default_rng(0)
    rows = []
    for path in sorted(IMAGES.glob("img[0-9].png")):
        load_ms, rgb = median_ms(lambda: load_image(path), repeats)
        given = load_mask(path.with_name(f"{path.stem}_mask.png"), like=rgb)
        canvas, canvas_mask = paste_off_centre(rgb, given, rng)
        for variant, photo, truth in (("256 crop", rgb, given), ("640x480 noise", canvas, canvas_mask)):
            mask_ms, detection = median_ms(lambda: find_person(photo), repeats)
            crop_ms, crop = median_ms(lambda: crop_person(photo, detection.mask), repeats)
            height, centre_x, centre_y = crop_box(crop)
            rows.append(
                f"| {path.name} | {variant} | {load_ms:.1f} | {mask_ms:.1f} | {crop_ms:.2f} | "
                f"{iou(detection.mask, truth):.3f} | {height} | {centre_x:.1f}, {centre_y:.1f} |"
            )
            print(rows[-1])

    report = [
        "# Photo inputs: load, automatic mask, crop",
        "",
        f"`benchmarks/bench_inputs_image.py`, median of {repeats} runs, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.",
        f"First `find_person` call (imports mediapipe, builds the Pose graph): {first_call_ms:.0f} ms.",
        "Load = reading the PNG file (the pasted variant reuses it). Mask = mediapipe Pose (complexity 1) + largest",
        "region. IoU against the given mask (the pasted person's mask on the canvas), both thresholded at 0.5.",
        "Crop box = the mask box in the 256 x 256 crop (target: 233 px tall, centred at 128, 128).",
        "",
        "| photo | variant | load ms | mask ms | crop ms | IoU | crop box height px | crop box centre px |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    RESULTS.write_text("\n".join(report))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
