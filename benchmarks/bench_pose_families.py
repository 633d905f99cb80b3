"""Pose families users bring: the body fit per family, with and without the person detector's landmarks.

Run: .venv/bin/python benchmarks/bench_pose_families.py [--n 4] [--families ...]  -> benchmarks/results_pose_families.md

Held-out synthetic clothed bodies (the fixed validation seed, default realism, one family at a time; arms in
front also hold a box between the hands), given Z-up in millimetres. Per family, mean and 90th-percentile vertex
error after the fit (all vertices) and the wrists' error (the model's wrist keypoints), for: no landmarks
(`landmarks=False`: no detector, the usual facing), the model's own keypoint regressor at its light weight (as
before the learned regressor), the learned detector regressor (weights/anny/anny-landmarks.npz, the default), and
the default without the search for misread limbs (`limbs=False`, lvd_core.limbs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.checkpoints import WEIGHTS_DIR  # noqa: E402
from lvd_core.inputs.scan import ScanError  # noqa: E402
from lvd_core.landmarks import regressor  # noqa: E402
from lvd_core.landmarks.detect import find_landmarks  # noqa: E402
from lvd_core.pipeline import fit_scan  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, held_out_set  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

FAMILIES = ("arms_front", "arms_crossed", "hands_on_hips", "hands_in_pockets", "knee_raised", "sitting", "standing")
BOX = np.array([0.26, 0.16, 0.20])  # metres: the box held in front (across, deep, high)
VARIANTS = ("no landmarks", "model's regressor", "learned regressor", "no limb search")


def held_box(wrists: np.ndarray, rng: np.random.Generator, count: int = 1500) -> np.ndarray:
    """(count, 3) points on the surface of a box centred between the wrists (2, 3), Z up, metres."""
    corner = rng.uniform(-0.5, 0.5, size=(count, 3))
    face = rng.integers(3, size=count)
    corner[np.arange(count), face] = np.sign(corner[np.arange(count), face]) * 0.5
    return wrists.mean(0) + corner * BOX


def fit(points_mm: np.ndarray, variant: str):
    """fit_scan as the variant says (the model's regressor: the learned one hidden; no limb search: the default
    without lvd_core.limbs)."""
    files = regressor.LANDMARK_FILES
    if variant == "model's regressor":
        regressor.LANDMARK_FILES = {}
    try:
        return fit_scan(points_mm, None, landmarks=variant != "no landmarks", limbs=variant != "no limb search")
    finally:
        regressor.LANDMARK_FILES = files


def family_row(body, family: str, n: int) -> tuple[str, float]:
    """The family's table row (bodies some variant refused are counted, and left out of every variant's errors)
    and the seconds it took."""
    coco, names = body.landmark_regressor()
    wrist_rows = coco[[names.index("left_wrist"), names.index("right_wrist")]].cpu().double().numpy()
    scans = held_out_set("anny", n, realism=ScanRealism(), sampling=BodySampling(yaw_range_deg=30, families=(family,)))
    errors = {v: [] for v in VARIANTS}
    wrists = {v: [] for v in VARIANTS}
    refused = {v: 0 for v in VARIANTS}
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for scan in scans:
        points = scan.points
        if family == "arms_front":
            points = np.concatenate([points, held_box(wrist_rows @ scan.vertices_gt, rng)])
        truth_mm = 1000 * scan.vertices_gt.astype(np.float64)
        results = {}
        for variant in VARIANTS:
            try:
                results[variant] = fit(1000 * points, variant)
            except ScanError:  # the scan checks refuse the fit (e.g. a misread pose looks like two people)
                refused[variant] += 1
        if len(results) < len(VARIANTS):
            continue
        for variant, result in results.items():
            errors[variant].append(np.linalg.norm(result.vertices_input - truth_mm, axis=1))
            wrists[variant].append(np.linalg.norm(wrist_rows @ result.vertices_input - wrist_rows @ truth_mm, axis=1))
    cells = []
    for variant in VARIANTS:
        if not errors[variant]:
            cells.append("- | -")
            continue
        e, w = np.concatenate(errors[variant]), np.concatenate(wrists[variant])
        cells.append(f"{e.mean():.1f} / {np.percentile(e, 90):.1f} | {np.mean(w):.0f}")
    fitted = len(errors[VARIANTS[0]])
    row = f"| {family} | {fitted} | " + " / ".join(str(refused[v]) for v in VARIANTS) + " | " + " | ".join(cells) + " |"
    print(row, flush=True)
    return row, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4, help="held-out bodies per family (each fitted once per variant)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=FAMILIES, help="pose families (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = load_body_model("anny")
    find_landmarks(np.random.default_rng(0).normal(size=(1000, 3)))  # the detector's one-off start-up
    rows, seconds = zip(*(family_row(body, family, args.n) for family in args.families))
    stamped = [WEIGHTS_DIR / "anny-body-scan" / "checkpoint.pt", regressor.landmark_file("anny")]
    lines = [
        "# Pose families users bring",
        "",
        f"`benchmarks/bench_pose_families.py {' '.join(sys.argv[1:])}`; {provenance(stamped)} CPU, 1 thread, load average "
        f"{os.getloadavg()[0]:.1f} when run ({sum(seconds) / 60:.0f} min).",
        "",
        "Held-out synthetic clothed bodies (validation seed, default realism, one pose family each; `arms_front` also",
        "holds a box between the hands), given Z-up in mm. Vertex error after the fit (all vertices), mm, mean / 90th",
        "percentile, and the wrists' mean error (mm). No landmarks: `landmarks=False` (no detector; the bodies face",
        "the usual way within 30 deg). Model's regressor: the detector's landmarks matched through the body model's",
        "own keypoints at their light weight (the fit before the learned regressor). Learned regressor: the default.",
        "The first three find misread limbs again on the scan (lvd_core.limbs); no limb search: the default without.",
        "Refused: bodies whose fit the scan checks refused, per variant (e.g. a misread pose taken for two people);",
        "n: the bodies every variant fitted, the only ones in the errors.",
        "",
        "| family | n | refused | " + " | ".join(f"{v} | wrists" for v in VARIANTS) + " |",
        "|---|---|---|" + "---|---|" * len(VARIANTS),
        *rows,
        "",
    ]
    write_results("pose_families", lines)


if __name__ == "__main__":
    main()
