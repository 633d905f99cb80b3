"""Body scans lying or upside down in their files, and scans of two people (lvd_core.scan_checks).

Run: .venv/bin/python benchmarks/bench_scan_checks.py [--n 6]  -> benchmarks/results_scan_checks.md

- Held-out synthetic clothed bodies (the fixed validation seed, default realism, all pose families), given in mm
  upright (Z up), lying along +X, lying along -Y and upside down: mean / 90th-percentile vertex error after the fit,
  how often the fitted person stands along the right axis of the file, and how many single-person scans were refused.
- The real scan in ../shared/data (Y up, cm), turned lying and upside down: median / 90th-percentile scan-to-body
  distance against the fit of the file as it is.
- Two people: each pair of those bodies side by side and one carried across the other's arms: how often refused,
  by which check; the share of scan points far from the fitted body on single and carried scans.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.inputs.scan import ScanError, load_scan  # noqa: E402
from lvd_core.landmarks.detect import find_landmarks  # noqa: E402
from lvd_core.landmarks.upright import TURNS_TO_UP  # noqa: E402
from lvd_core.outputs import person_up  # noqa: E402
from lvd_core.checkpoints import WEIGHTS_DIR  # noqa: E402
from lvd_core.pipeline import fit_scan  # noqa: E402
from lvd_core.scan_checks import FAR_SHARE, MAX_FAR_POINTS, check_one_figure, far_share  # noqa: E402
from lvd_core.synth import ScanRealism, held_out_set  # noqa: E402
from lvd_core.synth.groups import carried, side_by_side  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

SHARED = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_SCAN = "scans/rp_dennis_posed_004_30k.obj"
# The person's feet-to-head direction in the file: upright, lying along X, lying along Y, on their head.
DIRECTIONS = ("+z", "+x", "-y", "-z")
LYING_ALONG_X = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # a quarter turn about Z: a Y-up file's person along +X


def fitted(points_mm: np.ndarray, faces=None):
    """fit_scan's result, or the ScanError that refused the scan."""
    try:
        return fit_scan(points_mm, faces)
    except ScanError as error:
        return error


def orientation_rows(scans, body) -> tuple[list[str], list[float]]:
    """Per direction: vertex error mean / p90 (mm), each scan's mean error against its upright fit's (mean and
    largest difference, scans fitted both ways), fits standing along the right axis, scans refused; and the far
    shares of the upright fits."""
    rows, far, upright = [], [], {}
    for direction in DIRECTIONS:
        file_from_model = TURNS_TO_UP[direction].T
        errors, differences, right_axis, refused, seconds = [], [], 0, 0, []
        for k, scan in enumerate(scans):
            result = fitted(1000 * scan.points.astype(np.float64) @ file_from_model.T)
            if isinstance(result, ScanError):
                refused += 1
                print(direction, "refused:", result, flush=True)
                continue
            right_axis += person_up(result, body) == direction
            seconds.append(result.timings["landmarks"])
            errors.append(np.linalg.norm(result.vertices_input @ file_from_model - 1000 * scan.vertices_gt, axis=1))
            if direction == "+z":
                upright[k] = errors[-1].mean()
                far.append(far_share(1000 * scan.points.astype(np.float64), result.vertices_input, 1000 * np.ptp(scan.points[:, 2])))
            elif k in upright:
                differences.append(abs(errors[-1].mean() - upright[k]))
        joined = np.concatenate(errors) if errors else np.full(1, np.nan)
        over = sum(e.mean() > 100 for e in errors)
        against = f"{np.mean(differences):.1f} / {np.max(differences):.1f}" if differences else "-"
        rows.append(f"| {direction} | {joined.mean():.1f} / {np.percentile(joined, 90):.1f} | {against} | {over} | "
                    f"{right_axis}/{len(scans)} | {refused} | {np.mean(seconds):.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows, far


def real_rows(body) -> list[str]:
    from scipy.spatial import cKDTree

    path = SHARED / REAL_SCAN
    if not path.exists():
        return [f"| {REAL_SCAN} | (not found) | | |"]
    file = load_scan(path)  # Y up, cm
    cells = []
    for turn in (np.eye(3), LYING_ALONG_X, np.diag([1.0, -1.0, -1.0])):
        vertices = file.vertices @ turn.T
        result = fitted(vertices, file.faces)
        if isinstance(result, ScanError):
            cells.append(f"refused: {result}")
            continue
        distance = 10 * cKDTree(result.vertices_input).query(load_scan((vertices, file.faces)).points)[0]
        cells.append(f"{np.median(distance):.1f} / {np.percentile(distance, 90):.0f} (person along {person_up(result, body)})")
    return ["| " + " | ".join(cells) + " |"]


def pair_rows(scans) -> tuple[list[str], list[float]]:
    """Per arrangement: refused before the fit (separate figures), after it (far from the body), fitted; the far
    shares of the carried scans that were fitted or refused after the fit."""
    rows, far = [], []
    pairs = list(zip(scans[::2], scans[1::2])) + list(zip(scans[1::2], scans[::2]))
    for name, arrange in (("side by side", side_by_side), ("carried", carried)):
        before = after = 0
        for first, second in pairs:
            result = fitted(1000 * arrange(first.points, second.points).astype(np.float64))
            message = str(result)
            before += isinstance(result, ScanError) and "separate person-sized figures" in message
            after += isinstance(result, ScanError) and "far from" in message
            if "far from" in message:
                far.append(float(message.split("%")[0].rsplit(" ", 1)[-1]) / 100)
        rows.append(f"| {name} | {len(pairs)} | {before} | {after} | {len(pairs) - before - after} |")
        print(rows[-1], flush=True)
    return rows, far


def single_figure_refusals(n: int) -> int:
    """How many of n held-out single-person scans (all pose families, default realism) the separate-figures check
    refuses (it needs no fit)."""
    refused = 0
    for scan in held_out_set("anny", n, realism=ScanRealism()):
        try:
            check_one_figure(load_scan((scan.points, None), units="m", up="z"))
        except ScanError:
            refused += 1
    return refused


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6, help="held-out synthetic body scans (each fitted 4 times, and in pairs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    find_landmarks(np.random.default_rng(0).normal(size=(1000, 3)))  # the detector's one-off start-up, untimed
    scans = list(held_out_set("anny", args.n, realism=ScanRealism()))
    body = load_body_model("anny")
    orientations, single_far = orientation_rows(scans, body)
    real = real_rows(body)
    pairs, pair_far = pair_rows(scans)
    figure_n = 48
    figure_refused = single_figure_refusals(figure_n)
    lines = [
        "# Body scans lying, upside down, or of two people",
        "",
        f"`benchmarks/bench_scan_checks.py --n {args.n}`; {provenance([WEIGHTS_DIR / 'anny-body-scan' / 'checkpoint.pt'])} CPU, 1 "
        f"thread, load average {os.getloadavg()[0]:.1f} when run.",
        "",
        f"Held-out synthetic clothed bodies ({args.n}, default realism, all pose families) given in mm with the person's",
        "feet-to-head along each direction of a Z-up file: vertex error after the fit (mm, mean / 90th percentile, all",
        "vertices), each scan's mean error against its upright fit's (mm, mean / largest difference), scans over 100 mm",
        "mean, fits standing along the right axis of the file, single-person scans refused, and the seconds (mean) of",
        "the landmarks stage (finding the person, and standing them up):",
        "",
        "| person's up | error | vs upright | over 100 mm | right axis | refused | landmarks (s) |",
        "|---|---|---|---|---|---|---|",
        *orientations,
        "",
        f"Real scan ({REAL_SCAN}, Y up, cm), as it is, lying along X (a quarter turn about Z) and upside down:",
        "scan-to-body distance, mm, median / 90th percentile (the file's axis the fitted person stands along):",
        "",
        "| file as is | lying | upside down |",
        "|---|---|---|",
        *real,
        "",
        "Two people: every pair of those bodies (both orders), side by side 0.3 m apart, and the second carried across",
        "the first's arms; refused before the fit (two separate person-sized figures side by side), after it (over",
        f"{MAX_FAR_POINTS:.0%} of the scan farther than {FAR_SHARE:.0%} of its height from the fitted body), or fitted:",
        "",
        "| arrangement | scans | refused before | refused after | fitted |",
        "|---|---|---|---|---|",
        *pairs,
        "",
        f"Share of scan points far from the fitted body: single upright people max {max(single_far, default=np.nan):.0%} "
        f"(mean {np.mean(single_far) if single_far else np.nan:.0%}); carried people refused after the fit min "
        f"{min(pair_far, default=np.nan):.0%}. The separate-figures check alone refused {figure_refused} of {figure_n} held-out",
        "single-person scans.",
        "",
    ]
    write_results("scan_checks", lines)


if __name__ == "__main__":
    main()
