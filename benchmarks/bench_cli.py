"""Times of the `lvd` command; writes benchmarks/results_cli.md.

Run: .venv/bin/python benchmarks/bench_cli.py
`lvd fit` (defaults: refinement, preview, rigged .glb/.fbx) on the bundled sample scan (27k faces) and on
a 1 M-face version of it (subdivided), per stage as the command reports them plus the command's wall time
(imports included); `lvd batch` throughput on 6 synthetic scans (Anny bodies in several units and up axes,
meshes and point clouds) with 2 worker processes, with 1, and as one batch (`--batch-size 6`: the descent and
the fit batched, the GPU's way); on a machine with CUDA also on the GPU, one at a time and batched. Every
command runs as a fresh process, the way a user runs it; wall times, so the machine's load (recorded) matters.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.cli import SAMPLE_SCAN  # noqa: E402

RESULTS = Path(__file__).with_name("results_cli.md")
LVD = [str(Path(sys.executable).parent / "lvd")]  # the console script, as users run it
TARGET_FACES = 1_000_000
BATCH_FRAMES = [("m", "z"), ("cm", "y"), ("mm", "z"), ("m", "y"), ("cm", "z"), ("mm", "y")]


def million_face_scan(path: Path) -> int:
    """The sample subdivided twice (x16 faces), then enough of its faces once more to reach TARGET_FACES;
    returns the face count."""
    mesh = trimesh.load(SAMPLE_SCAN, process=False)
    vertices, faces = mesh.vertices, mesh.faces
    for _ in range(2):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    extra = (TARGET_FACES - len(faces)) // 3
    vertices, faces = trimesh.remesh.subdivide(vertices, faces, face_index=np.arange(extra))
    trimesh.Trimesh(vertices, faces, process=False).export(path)
    return len(faces)


def batch_scans(folder: Path) -> None:
    """Six synthetic scans (varied bodies, clothes, holes, noise), each in its own units and up axis."""
    import torch

    from lvd_core.body import load_body_model
    from lvd_core.synth.dataset import sample_params
    from lvd_core.synth.scans import make_scan, write_scan_file

    torch.set_num_threads(1)
    body = load_body_model("anny")
    folder.mkdir()
    for index, (units, up) in enumerate(BATCH_FRAMES):
        rng = np.random.default_rng(index)
        scan = make_scan(body, sample_params(body, rng), rng)
        write_scan_file(scan, body.up_axis, folder / f"scan{index}_{units}_{up}up.ply", units=units, up_axis=up)


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(LVD + argv, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lvd {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def load_line() -> str:
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    lines = [
        "# `lvd` command: times",
        "",
        f"`benchmarks/bench_cli.py`, {platform.machine()}, {os.cpu_count()} cores, torch on the CPU with 1 thread per "
        "process (the CLI's default). Wall seconds of one run each, measured while a training job kept both cores "
        "busy (the load is recorded before each measurement): on an idle machine expect well under half.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="lvd-bench-") as scratch:
        scratch = Path(scratch)
        big = scratch / "sample_1m.ply"
        face_count = million_face_scan(big)
        fits = {}
        for label, path in ((f"sample scan ({len(trimesh.load(SAMPLE_SCAN, process=False).faces) // 1000}k faces)", SAMPLE_SCAN),
                            (f"subdivided sample ({face_count / 1e6:.2f} M faces)", big)):  # fmt: skip
            load = load_line()
            seconds, _ = timed(["fit", str(path), "--out", str(scratch / "fit")])
            timings = json.loads((scratch / "fit" / f"{path.stem}.json").read_text())["timings"]
            fits[label] = (timings, seconds, load)
            print(label, seconds, timings, flush=True)
        stages = list(dict.fromkeys(stage for timings, _, _ in fits.values() for stage in timings))
        lines += ["## `lvd fit` per stage (seconds)", "", "| stage | " + " | ".join(fits) + " |", "|---" * (len(fits) + 1) + "|"]
        for stage in stages:
            lines.append(f"| {stage} | " + " | ".join(f"{timings.get(stage, 0):.2f}" for timings, _, _ in fits.values()) + " |")
        lines.append("| **command wall time** (imports, bpy, everything) | " + " | ".join(f"**{s:.1f}**" for _, s, _ in fits.values()) + " |")
        lines += ["", *(f"- {label}: {load}" for label, (_, _, load) in fits.items()), ""]

        batch_scans(scratch / "batch")
        lines += ["## `lvd batch` throughput, 6 synthetic scans (defaults: refinement, preview, rigged export)", "",
                  "| how | wall seconds | inputs / min | load before |", "|---|---|---|---|"]  # fmt: skip
        import torch

        ways = {"2 worker processes": ["--workers", "2"], "1 process": ["--workers", "1"],
                "1 process, one batch of 6": ["--workers", "1", "--batch-size", "6"]}  # fmt: skip
        if torch.cuda.is_available():
            ways.update({"CUDA, one at a time": ["--device", "cuda", "--batch-size", "1"], "CUDA, one batch of 6": ["--device", "cuda", "--batch-size", "6"]})
        rates = {}
        for k, (how, options) in enumerate(ways.items()):
            load = load_line()
            seconds, _ = timed(["batch", str(scratch / "batch"), "--out", str(scratch / f"batch{k}"), *options])
            rates[how] = len(BATCH_FRAMES) / seconds * 60
            lines.append(f"| {how} | {seconds:.1f} | {rates[how]:.1f} | {load.split(': ')[1]} |")
            print(how, seconds, flush=True)
    faster = 2 if rates["2 worker processes"] > rates["1 process"] else 1
    lines += [
        "",
        "Notes",
        "- `fit` (the body fit to the predicted vertices) does not depend on the scan's size; a 1 M-face scan costs "
        "a few seconds more to load, twice (`load`, and `preview_scan`: the preview's own read of the scan).",
        "- The gap between the stages' sum and the wall time is the command's start: importing torch, Anny and bpy.",
        f"- Batch: {faster} worker{'s' if faster > 1 else ''} fitted faster here. 2 processes only pay off on free cores "
        "(with 1, the fits run in-process: no spawn, no second set of imports); `--workers` defaults to min(2, CPU count).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
