"""Times every synthetic-data generator per sample on one thread; writes results_synth.md.

Run: .venv/bin/python benchmarks/bench_synth.py [--samples 30]
Median and minimum per sample (the minimum is the cost on an idle core: the machine may be shared).
"""

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.synth import (  # noqa: E402
    ScanRealism,
    SyntheticScans,
    make_scan,
    render_photo,
    sample_params,
    sample_pose,
    sample_shape,
)
from lvd_core.synth.scans import posed_body  # noqa: E402

RESULTS = Path(__file__).with_name("results_synth.md")


def per_sample_ms(step, samples):
    """(median, minimum) wall time in ms of step(i) over i = 0..samples-1, after one warm-up call."""
    step(samples)
    times = []
    for i in range(samples):
        start = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    body, hand = load_body_model("anny"), load_body_model("anny-hand-right")
    params = [sample_params(body, np.random.default_rng(i), 1) for i in range(args.samples + 1)]
    hand_params = [sample_params(hand, np.random.default_rng(i), 1) for i in range(args.samples + 1)]
    dataset = SyntheticScans("anny", seed=0)
    rng = lambda i: np.random.default_rng([99, i])  # noqa: E731
    steps = {
        "pose (sample_pose, 1 body)": lambda i: sample_pose(body, rng(i), 1),
        "shape (sample_shape, 1 call of 1)": lambda i: sample_shape(body, rng(i), 1),
        "shape (a block of 64, as the dataset draws them; per block)": lambda i: sample_shape(body, rng(i), 64),
        "Anny forward (1 body)": lambda i: posed_body(body, params[i]),
        "scan, clean 10k points (incl. forward)": lambda i: make_scan(body, params[i], rng(i), realism=ScanRealism.clean()),
        "scan, default realism (incl. forward)": lambda i: make_scan(body, params[i], rng(i)),
        "scan, mesh output (incl. forward)": lambda i: make_scan(body, params[i], rng(i), realism=ScanRealism(mesh_probability=1.0)),
        "hand scan, object + wrist cut (incl. forward)": lambda i: make_scan(
            hand, hand_params[i], rng(i), realism=ScanRealism(object_in_hand_probability=1.0, wrist_cut_probability=1.0)
        ),
        "dataset sample (params + forward + scan)": lambda i: dataset[i],
        "photo 256x256 (incl. forward)": lambda i: render_photo(body, params[i], rng(i)),
    }
    rows = []
    for name, step in steps.items():
        median, minimum = per_sample_ms(step, args.samples)
        rows.append(f"| {name} | {median:.1f} | {minimum:.1f} |")
        print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    RESULTS.write_text(
        "# Synthetic data: cost per sample\n\n"
        f"`benchmarks/bench_synth.py`, {args.samples} samples each, 1 torch thread, {platform.machine()}, "
        f"{os.cpu_count()} cores (load average {load:.1f} at the end: shared), Python {platform.python_version()}.\n"
        "Scans: ~10k surface points (fewer after holes). The median is under load; the minimum is the idle cost.\n\n"
        "| generator | median ms | min ms |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(RESULTS)


if __name__ == "__main__":
    main()
