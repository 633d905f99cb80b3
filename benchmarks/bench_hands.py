"""Hand scans as they come: handedness chosen by fitting both sides, forearms cropped before the fit.

Run: .venv/bin/python benchmarks/bench_hands.py [--n 96] [--forearm-left-on]  -> benchmarks/results_hands.md

- Held-out synthetic hands (their own seed, never trained on): half of them left, every one turned by a random
  rotation, half of each side with a forearm attached (lvd_core.synth.forearms, sleeves on some), the others
  as the hand network's training data (objects in the hand, wrist cuts). Each is fitted with `anny-hand`
  (both sides, lvd_core.hands): handedness right, the gap between the two sides' residuals, mean vertex
  error of the kept fit; with --forearm-left-on the forearm hands also with the cropper off, for comparison.
- The forearm cropper alone on the same scans: share of the hand's points kept and of the forearm's dropped.
- Real hand scans in ../shared/data (left hands): the side chosen, both sides' residuals (unitless scans: mm of
  a model-sized hand) and fingertip curl (lvd_core.hands.fingertip_curl: towards the palm positive), and the time
  of a fit of both sides reading the scan's 200,000 surface samples (as bodies do) and hands.HAND_POINTS.
- Fingertip curl of the synthetic hands themselves (lvd_core.synth's poses), for comparison with real hands.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core import pipeline  # noqa: E402
from lvd_core.checkpoints import DEFAULT_SCAN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core import hands  # noqa: E402
from lvd_core.hands import EITHER_SIDE, choose_side, fingertip_curl, fit_both_sides, forearm_cut  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, make_scan, sample_params  # noqa: E402
from lvd_core.synth.dataset import VALIDATION_SEED  # noqa: E402
from lvd_core.synth.forearms import with_forearm  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

SHARED = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data"))
SIDES = EITHER_SIDE["anny-hand"]
HAND_SEED = (VALIDATION_SEED, 33)  # apart from the bodies' validation samples


def held_out_hand(index: int) -> tuple[str, bool, np.ndarray, np.ndarray, int, float]:
    """Hand `index`: (side, with forearm, scan points (N, 3), true vertices (V, 3) in the scan's frame, forearm
    point count (the last ones), the true hand's fingertip curl)."""
    side = SIDES[index % 2]
    forearm = index % 4 >= 2
    body = load_body_model(side)
    rng = np.random.default_rng([*HAND_SEED, index])
    params = sample_params(body, rng, 1, BodySampling())
    scan = make_scan(body, params, rng, realism=ScanRealism(wrist_cut_probability=0.0) if forearm else ScanRealism())
    if forearm:
        scan = with_forearm(body, scan, rng)
    turn = Rotation.random(random_state=rng).as_matrix()
    curl = fingertip_curl(body, scan.joints_gt)
    return side, forearm, scan.points @ turn.T, scan.vertices_gt @ turn.T, scan.info.get("forearm_points", 0), curl


def vertex_error_mm(result, truth: np.ndarray) -> float:
    return float(np.linalg.norm(result.vertices_input - truth, axis=1).mean() * 1000)


def synthetic_rows(n: int, forearm_left_on: bool) -> list[str]:
    rows, kept, dropped, flagged, curls = [], [], [], [], []
    for index in range(n):
        side, forearm, points, truth, arm_points, curl = held_out_hand(index)
        curls.append(curl)
        cut = forearm_cut(points)
        keep = np.ones(len(points), bool) if cut is None else points @ cut[0] <= cut[1]
        hand_points = len(points) - arm_points
        kept.append(keep[:hand_points].mean())
        if forearm:
            dropped.append((~keep[hand_points:]).mean())
        else:
            flagged.append(cut is not None)
        start = time.perf_counter()
        outcomes = fit_both_sides(pipeline.fit_scans, [(points, None)], SIDES, units="m", up="z")[0]
        seconds = time.perf_counter() - start
        chosen = choose_side(outcomes)
        residuals = {fit.body_name: fit.residual_mm for fit in outcomes}
        uncropped = float("nan")
        if forearm and forearm_left_on:
            cropper = pipeline.without_forearm
            pipeline.without_forearm = lambda scan, detect_size=True: scan
            try:
                uncropped = vertex_error_mm(pipeline.fit_scan(points, None, body=side, units="m", up="z"), truth)
            finally:
                pipeline.without_forearm = cropper
        rows.append(dict(side=side, forearm=forearm, chosen=chosen.body_name, error=vertex_error_mm(chosen, truth),
                         gap=residuals[SIDES[0]] - residuals[SIDES[1]], residual=residuals[side],
                         uncertain=chosen.side_uncertain, bent_back=chosen.fingers_bent_back, uncropped=uncropped,
                         seconds=seconds))  # fmt: skip
        print(rows[-1], flush=True)
    return table(rows) + [
        "",
        f"Forearm cropper on the same scans: hand points kept {np.mean(kept):.1%} (lowest {np.min(kept):.1%}); forearm points "
        f"dropped {np.mean(dropped):.1%} (lowest {np.min(dropped):.1%}) of {len(dropped)} forearms; a forearm found on "
        f"{int(np.sum(flagged))} of {len(flagged)} hands without one.",
        "",
        f"Fingertip curl of these synthetic hands (towards the palm positive, wrist-to-knuckle lengths): median "
        f"{np.median(curls):+.2f}, {np.mean(np.array(curls) < 0):.0%} bent backwards.",
    ]  # fmt: skip


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| hands | count | side right | mean vertex error, mm (per-hand median, max) | with the forearm left on, mm | "
        "residual gap, wrong side minus right side, mm: min / median | side uncertain (gap < SIDE_MARGIN; fingers bent back) | "
        "time per hand (both sides) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = [("all", lambda r: True), ("left", lambda r: r["side"].endswith("left")),
              ("right", lambda r: r["side"].endswith("right")), ("with forearm", lambda r: r["forearm"]),
              ("without forearm", lambda r: not r["forearm"])]  # fmt: skip
    for label, member in groups:
        group = [r for r in rows if member(r)]
        if not group:
            continue
        right = [r["chosen"] == r["side"] for r in group]
        errors = np.array([r["error"] for r in group])
        gaps = np.array([r["gap"] if r["side"] == SIDES[1] else -r["gap"] for r in group])
        shares = gaps / np.array([r["residual"] for r in group])
        uncropped = np.array([r["uncropped"] for r in group if r["forearm"] and not np.isnan(r["uncropped"])])
        uncropped_cell = f"{uncropped.mean():.1f} ({np.median(uncropped):.1f}, {uncropped.max():.1f})" if len(uncropped) else "-"
        lines.append(
            f"| {label} | {len(group)} | {np.mean(right):.0%} ({sum(right)}) | {errors.mean():.1f} ({np.median(errors):.1f}, "
            f"{errors.max():.1f}) | {uncropped_cell} | {gaps.min():.2f} / {np.median(gaps):.2f} ({shares.min():.0%} / {np.median(shares):.0%} of the right side's) | "
            f"{sum(r['uncertain'] for r in group)} ({sum(r['bent_back'] for r in group)}) | "
            f"{np.mean([r['seconds'] for r in group]):.1f} s |"
        )  # fmt: skip
    return lines


def fit_both_timed(path: Path, points: int) -> tuple[tuple, float]:
    """Both sides' fits of a scan read as `points` surface samples, and their seconds."""
    pipeline.HAND_POINTS = points
    try:
        start = time.perf_counter()
        outcomes = fit_both_sides(pipeline.fit_scans, [path], SIDES)[0]
        return outcomes, time.perf_counter() - start
    finally:
        pipeline.HAND_POINTS = hands.HAND_POINTS


def real_rows() -> list[str]:
    rows = ["| input | side chosen | residual left / right, mm | fingertip curl of the left / right fit | side uncertain | "
            "time, both sides: 200,000 samples / HAND_POINTS |", "|---|---|---|---|---|---|"]  # fmt: skip
    for i in range(3):
        path = SHARED / "hands" / f"sample_{i}.obj"
        if not path.exists():
            continue
        _, before = fit_both_timed(path, 200_000)
        outcomes, seconds = fit_both_timed(path, hands.HAND_POINTS)
        chosen = choose_side(outcomes)
        rows.append(f"| hands/sample_{i}.obj | {chosen.body_name} | {outcomes[0].residual_mm:.2f} / {outcomes[1].residual_mm:.2f} | "
                    f"{outcomes[0].finger_curl:+.2f} / {outcomes[1].finger_curl:+.2f} | {'yes' if chosen.side_uncertain else 'no'} | {before:.1f} s / {seconds:.1f} s |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=96, help="held-out synthetic hands (the issue's figure: 96)")
    parser.add_argument("--forearm-left-on", action="store_true", help="also fit the forearm hands uncropped")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# Hand scans: handedness and forearms",
        "",
        f"`benchmarks/bench_hands.py --n {args.n}`; {provenance([WEIGHTS_DIR / DEFAULT_SCAN_WEIGHTS['anny-hand']])} CPU, 1 thread, load average {os.getloadavg()[0]:.1f} when run.",
        "",
        f"{args.n} held-out synthetic hands (half left; random rotations; half of each side with a 20-30 cm forearm, half of",
        "those in a sleeve), fitted with `anny-hand`: both sides fitted, the one whose refined body lies closest to the",
        "scan kept (smallest median scan-to-body distance). Vertex error: all 1,609 vertices against the true hand.",
        "",
        *synthetic_rows(args.n, args.forearm_left_on),
        "",
        "Real hand scans (../shared/data, left hands), fitted with `anny-hand`; residual: median distance from the scan to",
        "the fitted hand (unitless scans: mm of a model-sized hand):",
        "",
        *real_rows(),
        "",
        "Real hands bend towards the palm, as lvd_core.synth's hands do (the curl of the synthetic hands above). A left",
        "hand bent forwards has nearly the outline of a right hand with the thumb in the same place: where the two sides'",
        "residuals differ by less than SIDE_MARGIN, the kept side is marked uncertain (`, check`). How the hand network",
        "was trained: weights/anny-hand-scan/manifest.json.",
        "",
    ]
    write_results("hands", lines)


if __name__ == "__main__":
    main()
