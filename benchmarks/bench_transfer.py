"""SMPL, SMPL-X and MANO from the shipped Anny networks (lvd_core.transfer) on held-out synthetic clothed scans.

Run: .venv/bin/python benchmarks/bench_transfer.py [--n 4] [--hand-n 4]  -> benchmarks/results_transfer.md

Each scan is fitted with Anny through lvd_core.pipeline.fit_scan; the fitted Anny body is then transferred to the
Anny-built stand-in model files (lvd_core.synth.standins; no licensed file). Reported: the distance from the true
body's vertices to the fitted surface (mm, mean / 90th percentile), for the Anny fit and for the transferred body,
and the transfer's time on one CPU thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_quality import hand_vertices  # noqa: E402
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.checkpoints import DEFAULT_SCAN_WEIGHTS, WEIGHTS_DIR  # noqa: E402
from lvd_core.pipeline import fit_scan  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, held_out_set  # noqa: E402
from lvd_core.synth.standins import write_standin  # noqa: E402
from lvd_core.transfer import surface_distance, transfer_result  # noqa: E402
from provenance import provenance  # noqa: E402


def percentiles(errors_mm: np.ndarray) -> str:
    return f"{errors_mm.mean():.1f} / {np.percentile(errors_mm, 90):.1f}"


def transfer_rows(source_name: str, targets: dict, n: int) -> list[str]:
    """One row per target model: true body -> Anny fit and -> transferred body, over n held-out scans."""
    source = load_body_model(source_name)
    scans = held_out_set(source_name, n, realism=ScanRealism(), sampling=BodySampling(yaw_range_deg=30))
    anny_mm, transferred_mm = [], {name: [] for name in targets}
    seconds = {name: [] for name in targets}
    for scan in scans:
        result = fit_scan(scan.points, None, body=source_name, units="m", up=source.up_axis)
        size = np.abs(np.linalg.det(result.input_from_model[:3, :3])) ** (1 / 3)  # input units per model metre
        anny_mm.append(1000 * surface_distance(scan.vertices_gt, result.vertices_input, source.faces) / size)
        for name, target in targets.items():
            transferred, report = transfer_result(result, target)
            seconds[name].append((report.seconds, report.cpu_seconds))
            distance = surface_distance(scan.vertices_gt, transferred.vertices_input, target.faces)
            transferred_mm[name].append(1000 * distance / size)
    anny, hands = np.stack(anny_mm), hand_vertices(source)
    split = lambda e: f"{e[:, ~hands].mean():.1f} / {e[:, hands].mean():.1f}" if hands.any() else "-"  # noqa: E731
    rows = []
    for name in targets:
        wall, cpu = np.array(seconds[name]).T
        moved = np.stack(transferred_mm[name])
        rows.append(f"| {source_name} -> {name} (stand-in) | {len(scans)} | {percentiles(anny.ravel())} | "
                    f"{percentiles(moved.ravel())} | {split(anny)} | {split(moved)} | "
                    f"{np.median(cpu):.2f} s (max {cpu.max():.2f}) | {np.median(wall):.2f} s |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4, help="held-out clothed body scans")
    parser.add_argument("--hand-n", type=int, default=4, help="held-out hand scans")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="lvd-standins-"))
    bodies = {name: load_body_model(name, write_standin(name, folder)) for name in ("smpl", "smplx")}
    hands = {"mano-right": load_body_model("mano-right", write_standin("mano-right", folder))}
    lines = [
        "# SMPL, SMPL-X and MANO by transfer from the Anny fit",
        "",
        f"`benchmarks/bench_transfer.py --n {args.n} --hand-n {args.hand_n}`; CPU, 1 thread, load average "
        f"{os.getloadavg()[0]:.1f} when run. {provenance([WEIGHTS_DIR / relative for relative in sorted(set(DEFAULT_SCAN_WEIGHTS.values()))])}",
        "",
        "Held-out synthetic scans (fixed validation seed; bodies clothed, default realism; hands with objects and",
        "wrist cuts), fitted with the shipped Anny network, then transferred to stand-in model files built from Anny",
        "(lvd_core.synth.standins: the official layouts, Anny's surface under the target's skeleton). Distance from",
        "every vertex of the true body to the fitted surface, mm (hands: of the model-sized hand), mean / 90th",
        "percentile; the mean over the hands' vertices (wrist, metacarpal and finger bones: 23% of Anny's vertices;",
        "SMPL has one joint for all five fingers) and over the rest; the transfer's CPU time per scan (median, max:",
        "what one free core takes) and its wall time (median, on the shared machine):",
        "",
        "| transfer | scans | true body -> Anny fit | true body -> transferred body | Anny fit: rest of the body / "
        "hands (mean) | transferred: rest of the body / hands (mean) | transfer CPU time | wall time |",
        "|---|---|---|---|---|---|---|---|",
        *transfer_rows("anny", bodies, args.n),
    ]
    if args.hand_n:
        lines += transfer_rows("anny-hand-right", hands, args.hand_n)
    text = "\n".join(lines + [""])
    print(text)
    (ROOT / "benchmarks" / "results_transfer.md").write_text(text)


if __name__ == "__main__":
    main()
