"""Body scans in any facing: the fit before (the usual facing assumed) and after (the person detector's facing).

Run: .venv/bin/python benchmarks/bench_facing.py [--n 8]  -> benchmarks/results_facing.md

- Held-out synthetic clothed bodies (the fixed validation seed, default realism), turned about the up axis by
  0/90/180/270 degrees and given Z-up in millimetres (units and up axis detected as for a user's file): mean and
  90th-percentile vertex error after the fit, per yaw, with `landmarks=False` (before) and `True` (after); how
  often the person was found; the triangulated landmarks' distance from the true body's (anny's COCO regressor).
- The real scan in ../shared/data turned to the same yaws, Z-up in millimetres: each fit's median and 90th
  percentile scan-to-body distance, against the fit of the file as it is.
- Cost of the landmarks per scan (rendering 8 views, the detector, triangulation), one CPU thread.
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
from lvd_core.canonical import scan_frame, yaw_rotation  # noqa: E402
from lvd_core.inputs.frame import QUARTER_TURNS  # noqa: E402
from lvd_core.inputs.scan import ScanError, load_scan  # noqa: E402
from lvd_core.landmarks.detect import INDEX, find_landmarks  # noqa: E402
from lvd_core.checkpoints import WEIGHTS_DIR  # noqa: E402
from lvd_core.pipeline import fit_scan  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, held_out_set  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

SHARED = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_SCAN = "scans/rp_dennis_posed_004_30k.obj"
YAWS = (0, 90, 180, 270)


def turned_mm(points_m: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Points (metres, Z up) turned by yaw about Z, in millimetres."""
    return 1000 * points_m @ yaw_rotation(np.radians(yaw_deg)).T


def landmark_errors(scans, body) -> tuple[list[str], list[float], int]:
    """Per landmark: median distance (mm) of the triangulated landmark from the true body's, over scans where
    it was located; the seconds each scan took; how many scans had a person."""
    weights, names = body.landmark_regressor()
    weights = weights.cpu().double().numpy()
    misses = {name: [] for name in names if name in INDEX}
    seconds, found = [], 0
    for scan in scans:
        loaded = load_scan((scan.points, None), units="m", up="z")
        frame = scan_frame(loaded)
        start = time.perf_counter()
        person = find_landmarks(frame.to_canonical(loaded.points.astype(np.float64)))
        seconds.append(time.perf_counter() - start)
        if not person.found:
            continue
        found += 1
        truth = weights @ scan.vertices_gt.astype(np.float64)
        located = frame.to_input(person.points)
        for name in misses:
            if person.confidence[INDEX[name]] > 0:
                misses[name].append(1000 * np.linalg.norm(located[INDEX[name]] - truth[names.index(name)]))
    rows = [f"| {name} | {np.median(m):.0f} | {len(m)} |" for name, m in misses.items() if m]
    return rows, seconds, found


def synthetic_rows(n: int) -> tuple[list[str], list[str], list[float]]:
    body = load_body_model("anny")
    scans = list(held_out_set("anny", n, realism=ScanRealism(), sampling=BodySampling(yaw_range_deg=30)))
    rows = []
    for yaw in YAWS:
        cells = []
        for landmarks in (False, True):
            errors, found, refused = [], 0, 0
            for scan in scans:
                try:
                    result = fit_scan(turned_mm(scan.points, yaw), None, landmarks=landmarks)
                except ScanError:  # taken for two people (scan_checks.check_explained): a misread fit
                    refused += 1
                    continue
                found += bool(result.person_found)
                errors.append(np.linalg.norm(result.vertices_input - turned_mm(scan.vertices_gt, yaw), axis=1))
            per_scan = np.stack(errors).mean(1)
            errors = np.concatenate(errors)
            cells.append(f"{errors.mean():.1f} / {np.percentile(errors, 90):.1f} | {(per_scan > 100).sum()} | {refused}")
            if landmarks:
                cells.append(f"{found}/{len(scans)}")
        rows.append(f"| {yaw} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    landmark_rows, seconds, found = landmark_errors(scans, body)
    return rows, landmark_rows + [f"(person found in {found} of {len(scans)} scans)"], seconds


def real_rows() -> tuple[list[str], list[float]]:
    import trimesh
    from scipy.spatial import cKDTree

    path = SHARED / REAL_SCAN
    if not path.exists():
        return [f"| {REAL_SCAN} | (not found) | | | |"], []
    mesh = trimesh.load(str(path), process=False)
    file_points = load_scan(path).points.astype(np.float64)
    z_up_m = np.asarray(mesh.vertices) @ QUARTER_TURNS[("y", "z")].T / 100  # the file: Y up, centimetres
    faces = np.asarray(mesh.faces)
    rows, seconds = [], []
    for landmarks in (False, True):
        reference = fit_scan(path, landmarks=landmarks)
        base = cKDTree(reference.vertices_input).query(file_points)[0] * 10  # cm -> mm
        cells = [f"{np.median(base):.1f} / {np.percentile(base, 90):.0f}"]
        for yaw in YAWS:
            vertices = turned_mm(z_up_m, yaw)
            result = fit_scan(vertices, faces, landmarks=landmarks)
            points = load_scan((vertices, faces)).points
            distance = cKDTree(result.vertices_input).query(points)[0]
            cells.append(f"{np.median(distance):.1f} / {np.percentile(distance, 90):.0f} ({result.facing_deg:.0f} deg)")
        rows.append(f"| {'after (landmarks)' if landmarks else 'before'} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    for yaw in YAWS:
        loaded = load_scan((turned_mm(z_up_m, yaw), faces))
        start = time.perf_counter()
        find_landmarks(scan_frame(loaded).to_canonical(loaded.points.astype(np.float64)))
        seconds.append(time.perf_counter() - start)
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8, help="held-out synthetic body scans (each fitted 8 times)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    find_landmarks(np.random.default_rng(0).normal(size=(1000, 3)))  # the detector's one-off start-up, untimed
    synthetic, landmark_rows, synthetic_seconds = synthetic_rows(args.n)
    real, real_seconds = real_rows()
    lines = [
        "# Body scans in any facing",
        "",
        f"`benchmarks/bench_facing.py --n {args.n}`; {provenance([WEIGHTS_DIR / 'anny-body-scan' / 'checkpoint.pt'])} CPU, 1 thread, load average "
        f"{os.getloadavg()[0]:.1f} when run.",
        "",
        "Before: the person assumed to face the usual way (-Y once Z up); after: the facing the person detector finds",
        "on 8 rendered views (`landmarks=True`, the default).",
        "",
        f"Held-out synthetic clothed bodies ({args.n}, default realism), turned about the up axis and given Z-up in mm;",
        "vertex error after the fit (all vertices), mm, mean / 90th percentile, scans over 100 mm mean, and scans",
        "refused as two people (a misread fit leaving much of the scan far from the body; left out of the error):",
        "",
        "| yaw (deg) | before | over 100 mm | refused | after | over 100 mm | refused | person found |",
        "|---|---|---|---|---|---|---|---|",
        *synthetic,
        "",
        f"Real scan ({REAL_SCAN}) turned about its up axis, given Z-up in mm: scan-to-body distance, mm, median / 90th",
        "percentile (facing the fit used); the first column is the file as it is (Y up, cm, facing +Z):",
        "",
        "| | file as is | " + " | ".join(f"{y} deg" for y in YAWS) + " |",
        "|---|---|" + "---|" * len(YAWS),
        *real,
        "",
        "Triangulated landmarks against the true body's (anny's COCO regressor on the unclothed body), synthetic scans",
        "at yaw 0, median distance in mm (scans where the landmark was located):",
        "",
        "| landmark | median | scans |",
        "|---|---|---|",
        *landmark_rows[:-1],
        "",
        landmark_rows[-1],
        "",
        "Cost of the landmarks per scan (8 views rendered, the detector, triangulation), one thread: synthetic point",
        f"clouds (~8k points) {np.mean(synthetic_seconds):.2f} s mean (max {np.max(synthetic_seconds):.2f})"
        + (f"; the real scan (200k surface samples) {np.mean(real_seconds):.2f} s mean (max {np.max(real_seconds):.2f})"
           if real_seconds else "") + ".",  # fmt: skip
        "",
    ]
    write_results("facing", lines)


if __name__ == "__main__":
    main()
