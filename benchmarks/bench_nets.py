"""Timings of the paper networks: encoder, one descent iteration, a whole descent, and the own-offset head
against the authors' full V x 3 head. One CPU thread; CUDA too when present. Random weights (timing only).

    .venv/bin/python benchmarks/bench_nets.py [--repeats N]     # writes benchmarks/results_nets.md
"""

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from lvd_core.descent import descend
from lvd_core.nets.base import LVDNetwork, all_vertex_outputs, diagonal_of_all_offsets, own_vertex_outputs
from lvd_core.nets.compact import CompactScanLVD
from lvd_core.nets.paper import PaperImageLVD, PaperScanLVD

RESULTS = Path(__file__).resolve().parent / "results_nets.md"
REDUCED_HEAD = (512, 1024, 1024, 1024, 1024)  # the paper's is (2048, 4096, 4096, 4096, 4096)


def cases() -> list[tuple[str, Callable[[], LVDNetwork], tuple[int, ...], float, int]]:
    """(label, builder, input shape, point spread, descent iterations) per network."""
    return [
        ("paper image net (V=6890, 25.8 M params)", PaperImageLVD, (1, 3, 256, 256), 80.0, 5),
        (f"voxel net, head widths {'/'.join(map(str, REDUCED_HEAD[:2]))} instead of 2048/4096 (V=6890)",
         lambda: PaperScanLVD(head_widths=REDUCED_HEAD), (1, 7, 128, 128, 128), 0.7, 10),
        ("compact scan net (ours, 1,024-vertex subset of Anny, 0.76 M params)",
         lambda: CompactScanLVD(1024), (1, 4, 32, 32, 32), 0.5, 10),
    ]


# The naive head of the compact net is a (B, P, V, hidden) tensor: 1 GB at P = V = 1024, so it is timed on a
# slice of the points and scaled (it is linear in the number of points).
NAIVE_SLICE = 64


def seconds(action: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` runs after one warm-up run (synchronising CUDA)."""
    best = float("inf")
    for run in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        action()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if run:
            best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def measure(network: LVDNetwork, input_shape: tuple[int, ...], spread: float, iterations: int,
            device: torch.device, repeats: int) -> dict[str, float]:
    """The row of timings for one network on one device."""
    inputs = torch.randn(input_shape, device=device)
    features = network.encode(inputs)
    points = (torch.rand(1, network.vertex_count, 3, device=device) * 2 - 1) * spread
    if isinstance(network, CompactScanLVD):  # a vertex-conditioned head: the whole pair MLP is the head
        own_head = seconds(lambda: network.predict_own_offsets(features, points), device, repeats)
        part = points[:, :NAIVE_SLICE]
        full_head = seconds(lambda: network.predict_all_offsets(features, part), device, repeats) * (
            network.vertex_count / NAIVE_SLICE
        )
    else:
        hidden = network.point_hidden(features, points)
        layer = network.offset_layer()
        own_head = seconds(lambda: own_vertex_outputs(layer, hidden), device, repeats)
        full_head = seconds(lambda: diagonal_of_all_offsets(all_vertex_outputs(layer, hidden)), device, repeats)
    return {
        "encoder": seconds(lambda: network.encode(inputs), device, repeats),
        "iteration": seconds(lambda: network.predict_own_offsets(features, points), device, repeats),
        "descent": seconds(lambda: descend(network, features, torch.zeros(3, device=device), iterations),
                           device, repeats),
        "own_head": own_head,
        "full_head": full_head,
    }


def table(rows: list[tuple[str, str, int, dict[str, float]]]) -> str:
    lines = ["| network | device | encoder (s) | 1 iteration, own head (s) | whole descent (s) | "
             "own-offset head (ms) | full V x 3 head + diagonal (ms) | full / own |",
             "|---|---|---|---|---|---|---|---|"]
    for label, device, iterations, t in rows:
        lines.append(f"| {label} | {device} | {t['encoder']:.3f} | {t['iteration']:.3f} | "
                     f"{t['descent']:.3f} ({iterations} it.) | {t['own_head'] * 1e3:.1f} | "
                     f"{t['full_head'] * 1e3:.1f} | {t['full_head'] / t['own_head']:.0f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (best is kept)")
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    torch.manual_seed(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for label, build, input_shape, spread, iterations in cases():
        network = build().eval()
        for device in devices:
            timings = measure(network.to(device), input_shape, spread, iterations, device, repeats)
            device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
            rows.append((label, device_name, iterations, timings))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report = (f"# Network timings (`benchmarks/bench_nets.py`)\n\n"
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, load average "
              f"{os.getloadavg()[0]:.1f} at the end (shared machine), one input, all V points, "
              f"random weights, best of {repeats} after a warm-up. The own-offset head uses only each vertex's "
              f"3 rows of the last layer; the full head is the authors' (B, V, V, 3) output.\n\n{table(rows)}\n")
    RESULTS.write_text(report)
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
