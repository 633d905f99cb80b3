"""Times of `lvd fit` and `lvd batch`; writes benchmarks/results_cli.md.

Run: .venv/bin/python benchmarks/bench_cli.py [--batch-scans N]
`lvd fit` with its defaults (refinement, preview, rigged .glb/.fbx) on a body scan, a hand scan and a photo
(the shared sample inputs when present, else the bundled sample scan alone), each
- as a command: a fresh `python -m lvd_core.cli` process, as a user runs it (imports, Blender's start and all);
- in-process: `cli.fit_input` (fit and every output) once the models are loaded, with our fit and with the
  old one (the finite-difference Jacobian, `FitOptions(jacobian="finite_difference")`) in the same run;
stage by stage as the fit reports them. Then `lvd batch` on N synthetic scans (Anny bodies in several units
and up axes) with 2 worker processes, and on a machine with CUDA on the GPU in batches. Wall seconds and CPU
seconds (this process and its children; one torch thread per process), and the machine's load before each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from lvd_core import cli, photo, pipeline  # noqa: E402
from lvd_core.checkpoints import resolve_weights  # noqa: E402
from lvd_core.fit import FitOptions  # noqa: E402
from provenance import provenance  # noqa: E402

RESULTS = Path(__file__).with_name("results_cli.md")
SHARED = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data"))
INPUTS = [  # label, path, extra options
    ("body scan (30k faces)", SHARED / "scans" / "rp_dennis_posed_004_30k.obj", []),
    ("hand scan", SHARED / "hands" / "sample_0.obj", ["--body", "anny-hand"]),
    ("photo", SHARED / "images" / "img1.png", []),
]
SAMPLE = ("bundled sample scan", cli.SAMPLE_SCAN, [])
BATCH_FRAMES = [("m", "z"), ("cm", "y"), ("mm", "z"), ("m", "y"), ("cm", "z"), ("mm", "y")]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def command(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (the command and the processes it waited for) of `python -m lvd_core.cli argv`."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lvd_core.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lvd {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return wall, children_cpu() - cpu


def finite_difference_fits():
    """Patch the pipeline and the photo fit to the old fit (the finite-difference Jacobian); returns the undo."""
    saved = pipeline.FitOptions, photo.PHOTO_FIT
    pipeline.FitOptions = functools.partial(FitOptions, jacobian="finite_difference")
    photo.PHOTO_FIT = replace(photo.PHOTO_FIT, jacobian="finite_difference")

    def undo() -> None:
        pipeline.FitOptions, photo.PHOTO_FIT = saved

    return undo


def in_process(path: Path, options: list[str], out: Path) -> tuple[float, float, dict, float]:
    """cli.fit_input with the command's settings: wall and CPU seconds of this process, stages, residual."""
    args = cli.build_parser().parse_args(["fit", str(path), "--out", str(out), *options])
    settings = cli.fit_settings(args)
    out.mkdir(parents=True, exist_ok=True)
    cpu, start = time.process_time(), time.perf_counter()
    result, _ = cli.fit_input(path, path.stem, settings)
    return time.perf_counter() - start, time.process_time() - cpu, dict(result.timings), result.residual_mm


def fit_rows(inputs, scratch: Path) -> list[str]:
    columns, stages = {}, []
    for label, path, options in inputs:
        load = load_average()
        wall, cpu = command(["fit", str(path), "--out", str(scratch / "command"), *options])
        timings = json.loads((scratch / "command" / f"{path.stem}.json").read_text())["timings"]
        in_process(path, options, scratch / "warm")  # loads this process's models and starts its exporter
        ours = in_process(path, options, scratch / "ours")
        undo = finite_difference_fits()
        try:
            old = in_process(path, options, scratch / "old")
        finally:
            undo()
        columns[label] = dict(command=(wall, cpu, timings), ours=ours, old=old, load=load)
        stages = list(dict.fromkeys([*stages, *timings, *ours[2], *old[2]]))
        print(label, columns[label], flush=True)

    header = "| stage | " + " | ".join(f"{label}: command | in-process | old fit, in-process" for label in columns) + " |"
    lines = [header, "|---" * (1 + 3 * len(columns)) + "|"]
    for stage in stages:
        cells = []
        for figures in columns.values():
            cells += [f"{t.get(stage, float('nan')):.2f}" for t in (figures["command"][2], figures["ours"][2], figures["old"][2])]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    walls, cpus = [], []
    for figures in columns.values():
        (wall, cpu, _), ours, old = figures["command"], figures["ours"], figures["old"]
        walls += [f"**{wall:.1f}**", f"**{ours[0]:.1f}**", f"**{old[0]:.1f}**"]
        cpus += [f"{cpu:.1f}", f"{ours[1]:.1f}", f"{old[1]:.1f}"]
    lines.append("| **wall seconds** (command: imports, Blender's start, everything) | " + " | ".join(walls) + " |")
    lines.append("| CPU seconds (the fitting process; Blender's exporter process not counted) | " + " | ".join(cpus) + " |")
    ratios = [f"old / ours, fit + refinement: {ratio(f['old'][2], f['ours'][2]):.1f}x; residual {f['ours'][3]:.1f} / {f['old'][3]:.1f} mm"
              for f in columns.values()]  # fmt: skip
    notes = [f"- {label}: load average (1, 5, 15 min) before: {f['load']}; {r}" for (label, f), r in zip(columns.items(), ratios)]
    return lines + ["", *notes]


def ratio(old: dict, ours: dict) -> float:
    def solve(t: dict) -> float:  # the body fit and its refinement (against the surface, or a photo's silhouette)
        return t.get("fit", 0.0) + t.get("refine", 0.0) + t.get("silhouette", 0.0)

    return solve(old) / max(solve(ours), 1e-9)


def batch_scans(folder: Path, count: int) -> None:
    """`count` synthetic scans (varied bodies, clothes, holes, noise), each in one of several units and up axes."""
    import torch

    from lvd_core.body import load_body_model
    from lvd_core.synth.dataset import sample_params
    from lvd_core.synth.scans import make_scan, write_scan_file

    torch.set_num_threads(1)
    body = load_body_model("anny")
    folder.mkdir()
    for index in range(count):
        units, up = BATCH_FRAMES[index % len(BATCH_FRAMES)]
        rng = np.random.default_rng(index)
        scan = make_scan(body, sample_params(body, rng), rng)
        write_scan_file(scan, body.up_axis, folder / f"scan{index}_{units}_{up}up.ply", units=units, up_axis=up)


def batch_rows(scratch: Path, count: int) -> list[str]:
    import torch

    batch_scans(scratch / "batch", count)
    ways = {"2 worker processes (the default)": ["--workers", "2"], "1 process": ["--workers", "1"]}
    if torch.cuda.is_available():
        ways.update({"CUDA, one at a time": ["--device", "cuda", "--batch-size", "1"],
                     "CUDA, batches of 8": ["--device", "cuda", "--batch-size", "8"]})  # fmt: skip
    lines = ["| how | wall seconds | inputs / min | CPU seconds per input | load before |", "|---|---|---|---|---|"]
    for k, (how, options) in enumerate(ways.items()):
        load = load_average()
        wall, cpu = command(["batch", str(scratch / "batch"), "--out", str(scratch / f"batch{k}"), *options])
        lines.append(f"| {how} | {wall:.1f} | {count / wall * 60:.1f} | {cpu / count:.2f} | {load} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-scans", type=int, default=12, help="synthetic scans in the batch measurement (default: 12)")
    count = parser.parse_args().batch_scans
    from lvd_core.devices import set_torch_threads

    set_torch_threads(1)
    inputs = [entry for entry in INPUTS if entry[1].exists()] or [SAMPLE]
    with tempfile.TemporaryDirectory(prefix="lvd-bench-") as scratch:
        scratch = Path(scratch)
        fits = fit_rows(inputs, scratch)
        cli.close_rigged_exporter()
        batch = batch_rows(scratch, count)
    weights = [resolve_weights("anny", None), resolve_weights("anny-hand-right", None)]
    lines = [
        "# `lvd` command: times",
        "",
        f"`benchmarks/bench_cli.py --batch-scans {count}`. {provenance(weights)}",
        f"{platform.machine()}, {os.cpu_count()} cores, torch on the CPU with 1 thread per process (the CLI's default). "
        "Wall seconds of one run each, and CPU seconds; the load average before each is given: wall times on a "
        "loaded machine are long, CPU seconds less so.",
        "",
        "## `lvd fit` per stage (seconds; defaults: refinement, preview, rigged .glb/.fbx)",
        "",
        *fits,
        "",
        f"## `lvd batch` throughput, {count} synthetic scans (defaults: refinement, preview, rigged export)",
        "",
        *batch,
        "",
        "Notes",
        "- command: the stages are the fit's own; the rest of the wall time is the start (Python, torch, Anny, the "
        "network) and the end. Blender's exporter starts in a process of its own before the fit, so its import "
        "overlaps the fit; `rigged_export` is the wait for it once the preview is drawn.",
        "- in-process: `cli.fit_input` with the models loaded and the exporter running (a batch worker's steady state).",
        "- batch: each worker loads the models and starts one exporter once, then fits scan after scan. CPU seconds "
        "per input: the batch's processes and workers over the inputs (the exporters' ~0.45 s per input, in processes "
        "of their own, not counted); inputs / min on 2 free cores is at most 120 / (their sum).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
