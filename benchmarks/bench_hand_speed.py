"""Time of a hand scan's fit (both sides) with the shortlisted facings read again at the extra yaws, against every
facing read at every yaw (pipeline.READ_AGAIN set to all facings: the same readings and choice as reading them all).

Run: .venv/bin/python benchmarks/bench_hand_speed.py [--n 12]  -> benchmarks/results_hand_speed.md

- Real hand scans in ../shared/data: time, side chosen, residual (median scan-to-body distance; unitless scans: mm
  of a model-sized hand) and the LVD stage's time.
- Held-out synthetic hands (bench_hands.held_out_hand): mean vertex error, side right, time.
One thread, the two ways back to back on each scan.
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

from lvd_core import pipeline  # noqa: E402
from lvd_core.checkpoints import DEFAULT_SCAN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from bench_hands import SHARED, held_out_hand, vertex_error_mm  # noqa: E402
from provenance import provenance  # noqa: E402

EVERY_FACING = 8  # hands: 4 yaws, each also upside down
WAYS = {"shortlisted facings read again": pipeline.READ_AGAIN, "every facing at every yaw": EVERY_FACING}


def timed_fit(source, read_again: int, **options):
    pipeline.READ_AGAIN = read_again
    start = time.perf_counter()
    result = pipeline.fit_scan(source, body="anny-hand", **options)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="held-out synthetic hands")
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = sorted((SHARED / "hands").glob("*.obj"))
    rows = ["| input | way | side chosen | residual, mm | time, both sides | of which LVD |", "|---|---|---|---|---|---|"]
    for path in real:
        for way, read_again in WAYS.items():
            result, seconds = timed_fit(str(path), read_again)
            rows.append(f"| {path.relative_to(SHARED)} | {way} | {result.body_name} | {result.residual_mm:.2f} | {seconds:.1f} s | {result.timings['lvd']:.1f} s |")
            print(rows[-1], flush=True)
    measured = {way: ([], [], []) for way in WAYS}
    for index in range(args.n):
        side, _, points, truth, _, _ = held_out_hand(index)
        for way, read_again in WAYS.items():
            result, seconds = timed_fit(points, read_again, faces=None, units="m", up="z")
            errors, right, times = measured[way]
            errors.append(vertex_error_mm(result, truth))
            right.append(result.body_name == side)
            times.append(seconds)
            print(index, way, f"{errors[-1]:.2f} mm", f"{seconds:.1f} s", flush=True)
    synthetic = ["| way | hands | mean vertex error, mm (per-hand median, max) | side right | time per hand (both sides) |", "|---|---|---|---|---|"]
    for way, (errors, right, times) in measured.items():
        synthetic.append(f"| {way} | {args.n} | {np.mean(errors):.2f} ({np.median(errors):.2f}, {np.max(errors):.2f}) | {np.mean(right):.0%} | {np.mean(times):.1f} s |")
    text = "\n".join([
        "# Hand scans: time of a fit of both sides",
        "",
        f"`benchmarks/bench_hand_speed.py --n {args.n}`; {provenance([WEIGHTS_DIR / DEFAULT_SCAN_WEIGHTS['anny-hand']])} CPU, 1 thread, load average {os.getloadavg()[0]:.1f} when run.",
        "",
        f"Every facing (4 yaws, each upside down) is read at yaw 0; the {WAYS['shortlisted facings read again']} best by a quick fit are read again at the",
        f"other yaws of YAW_JITTER_DEG {pipeline.YAW_JITTER_DEG['hand']}, against reading all {EVERY_FACING} at every yaw (24 readings a side).",
        "",
        "Real hand scans (../shared/data, left hands):",
        "",
        *rows,
        "",
        f"Held-out synthetic hands (benchmarks/bench_hands.py's first {args.n}):",
        "",
        *synthetic,
        "",
    ])  # fmt: skip
    (ROOT / "benchmarks" / "results_hand_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
