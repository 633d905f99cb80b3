"""Times a training step of each scan network size in float32 and in bfloat16, and the data of one example;
writes results_train.md.

Run: .venv/bin/python benchmarks/bench_train.py [--steps 10]
One torch thread (training's default); a step is the network's forward, backward and Adam update on a batch of
the default recipe (lvd_core.train.TrainConfig), synthetic inputs; the data is built by the data workers
(`--workers`), beside the steps. Best of the timed steps after a warm-up (the machine may be shared).
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
from lvd_core.devices import training_autocast  # noqa: E402
from lvd_core.nets.compact import CompactScanLVD  # noqa: E402
from lvd_core.train import NETWORK_SIZES, TrainConfig, TrainingExamples, build_network, training_step  # noqa: E402

RESULTS = Path(__file__).with_name("results_train.md")


def seconds_per_step(network: CompactScanLVD, config: TrainConfig, dtype: torch.dtype | None, steps: int) -> float:
    """Best wall time of one optimisation step, lvd_core.train.training_step (after one warm-up step)."""
    r = network.resolution
    grids = torch.rand(config.batch, network.settings["in_channels"], r, r, r)
    queries = torch.rand(config.batch, config.pairs, 3) - 0.5
    vertex = torch.randint(0, network.vertex_count, (config.batch, config.pairs))
    targets = 0.05 * torch.randn(config.batch, config.pairs, 3)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-5)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        training_step(network, optimiser, grids, queries, vertex, targets, dtype)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def seconds_per_example(config: TrainConfig, network: CompactScanLVD, vertex_ids: np.ndarray, count: int) -> float:
    """Median wall time of one training example (synthetic scan, grid, query pairs)."""
    examples = iter(TrainingExamples(config, vertex_ids, network.template.numpy(), start=10_000))
    next(examples)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        next(examples)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the compact network (the large one: a third)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    native = training_autocast(torch.device("cpu")) is not None
    rows = []
    for size, overrides in NETWORK_SIZES.items():
        config = TrainConfig(network=dict(overrides))
        network, vertex_ids = build_network(config)
        steps = args.steps if size == "compact" else max(2, args.steps // 3)
        fp32, bf16 = (seconds_per_step(network, config, dtype, steps) for dtype in (None, torch.bfloat16))
        data = seconds_per_example(config, network, vertex_ids, steps) * config.batch
        rows.append(f"| {size} ({network.resolution}^3) | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.1f}x | {data:.2f} |")
        print(rows[-1], flush=True)
    RESULTS.write_text(
        "# Training: the cost of a step\n\n"
        f"`benchmarks/bench_train.py --steps {args.steps}`, 1 torch thread, {platform.machine()} "
        f"(native bfloat16: {'yes' if native else 'no'}), {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f} at the end (shared), torch {torch.__version__}. A step: forward, backward and "
        f"Adam on a batch of {config.batch} scans x {config.pairs} query pairs; best of the timed steps. The data of a "
        "batch is built beside the steps by the data workers (one by default): a run goes at the slower of the two.\n\n"
        "| network | step, float32 (s) | step, bfloat16 (s) | speed-up | data of a batch, one worker (s) |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(RESULTS)


if __name__ == "__main__":
    main()
