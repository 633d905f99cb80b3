"""Per-stage times of the scan input pipeline; writes benchmarks/results_inputs_scan.md.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_inputs_scan.py
Scans: the sample body scan (skipped when ../shared/data is absent) and synthetic bodies of about 100 k,
1 M and 5 M faces (five capsules, centimetres, Y-up, written as PLY). Times are CPU times (process_time: stable
when other jobs share the machine; equal to wall time on an idle machine with 1 thread), best of `REPEATS`,
except the row "paper grid, every core (wall)": the 128^3 grid as `lvd fit` builds it for the authors'
networks (KD-tree queries on every core), in wall time. The last row is the process's peak memory after
that scan (scans run from small to large, so it is the peak of the largest so far).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core.inputs import scan as scan_module  # noqa: E402
from lvd_core.inputs.frame import normalize  # noqa: E402
from lvd_core.inputs.grids import COMPACT_BODY, PAPER_BODY, GridPreset  # noqa: E402

SAMPLE_SCAN = ROOT.parent / "shared" / "data" / "scans" / "rp_dennis_posed_004_30k.obj"
RESULTS = Path(__file__).with_name("results_inputs_scan.md")
REPEATS = 3


def best_time(function, repeats: int = REPEATS, clock=time.process_time):
    """(best seconds, last result); CPU seconds by default, wall seconds with clock=time.perf_counter (for
    code that runs on several threads)."""
    times = []
    for _ in range(repeats):
        start = clock()
        result = function()
        times.append(clock() - start)
    return min(times), result


def synthetic_body(faces: int) -> trimesh.Trimesh:
    """Torso, head, two legs and an arm as capsules (cm, Y-up), about `faces` triangles in all."""
    per_part = int(np.sqrt(faces / 10))
    parts = []
    for height, radius, (x, y) in [(60, 18, (0, 120)), (10, 11, (0, 172)), (75, 8, (-10, 42)), (75, 8, (10, 42)), (55, 5, (30, 120))]:
        part = trimesh.creation.capsule(height=height, radius=radius, count=[per_part, per_part])
        part.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z -> y
        part.apply_translation([x, y, 0])
        parts.append(part)
    return trimesh.util.concatenate(parts)


def pipeline_stages(path: Path):
    """Stage times for one scan file, facts about it, its canonical vertices (paper frame) and surface
    samples (compact frame)."""
    times = {}
    times["read"], (vertices, faces, name) = best_time(lambda: scan_module.read_geometry(path))

    def clean():
        v, f, _ = scan_module.drop_nonfinite_vertices(vertices, faces)
        v, f, _ = scan_module.merge_duplicate_vertices(v, f)
        v, f, _ = scan_module.drop_small_fragments(v, f)
        scan_module.check_usable(v)
        return v, f

    times["clean"], (clean_vertices, clean_faces) = best_time(clean)
    times["sample 200k"], points = best_time(lambda: scan_module.sample_points(clean_vertices, clean_faces, 200_000))
    times["load_scan total"], scan = best_time(lambda: scan_module.load_scan(path), repeats=1)
    times["normalise"], frame = best_time(lambda: normalize(scan, up_out="y", height=1.5))
    paper_points = frame.to_canonical(scan.points.astype(np.float64))
    paper_vertices = frame.to_canonical(scan.vertices)
    times["paper grid (200k samples)"], _ = best_time(lambda: PAPER_BODY.grid(paper_points))
    times["paper grid, every core (wall)"], _ = best_time(lambda: PAPER_BODY.grid(paper_points, workers=-1), clock=time.perf_counter)
    times["paper grid (50k samples)"], _ = best_time(lambda: PAPER_BODY.grid(paper_points[:50_000]))
    times["paper grid (vertices)"], _ = best_time(lambda: PAPER_BODY.grid(paper_vertices))
    compact = normalize(scan, up_out="z", height=1.0)
    times["compact grid (200k samples)"], _ = best_time(lambda: COMPACT_BODY.grid(compact.to_canonical(scan.points)))
    info = {"faces": len(scan.faces), "vertices": len(scan.vertices), "units": scan.units, "up": scan.up,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip
    return times, info, paper_vertices, compact.to_canonical(scan.points)


def paper_band_accuracy(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact grid time and the banded preset's mean / max absolute error per channel."""
    exact_time, exact = best_time(lambda: replace(PAPER_BODY, exact_band=None).grid(points), repeats=1)
    error = np.abs(PAPER_BODY.grid(points) - exact).reshape(PAPER_BODY.channels, -1)
    return exact_time, error.mean(axis=1), error.max(axis=1)


def compact_choices(points: np.ndarray) -> list[tuple[str, float]]:
    """Compact grid times at 32^3 and 48^3 for body-model-sized point sets."""
    rows = []
    for resolution in (32, 48):
        cell = 1.2 / resolution
        thresholds = tuple(c * cell for c in (0.5, 1, 2, 4))
        preset = GridPreset(-0.6, 0.6, resolution, thresholds, tuple(1 / t for t in thresholds), False, False, None)
        for count in (14_000, 50_000):
            subset = points[np.random.default_rng(0).choice(len(points), min(count, len(points)), replace=False)]
            seconds, _ = best_time(lambda: preset.grid(subset), repeats=5)
            rows.append((f"{resolution}^3, {len(subset)} points", seconds))
    return rows


def main() -> None:
    lines = [
        "# Scan input pipeline: per-stage times",
        "",
        f"`benchmarks/bench_inputs_scan.py`, {platform.processor() or platform.machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, best of {REPEATS} CPU times in ms "
        "(a shared 2-core machine: expect +-20 %).",
        "",
    ]
    with tempfile.TemporaryDirectory() as folder:
        scans = {}
        if SAMPLE_SCAN.is_file():
            scans["sample body (30k faces, OBJ)"] = SAMPLE_SCAN
        for faces in (100_000, 1_000_000, 5_000_000):
            path = Path(folder) / f"synthetic_{faces}.ply"
            synthetic_body(faces).export(path)
            scans[f"synthetic {faces // 1000}k faces (PLY)"] = path
        results, sample_vertices, sample_compact = {}, None, None
        for label, path in scans.items():
            times, info, paper_vertices, compact_points = pipeline_stages(path)
            results[label] = (times, info)
            if sample_vertices is None:
                sample_vertices, sample_compact = paper_vertices, compact_points
            print(label, info, {k: round(v * 1000) for k, v in times.items()}, flush=True)
    stages = list(next(iter(results.values()))[0])
    lines += ["| stage | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    lines += ["| faces / vertices after cleaning | " + " | ".join(f"{i['faces']} / {i['vertices']}" for _, i in results.values()) + " |"]
    lines += ["| detected units, up | " + " | ".join(f"{i['units']}, {i['up']}" for _, i in results.values()) + " |"]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{t[stage] * 1000:.0f}" for t, _ in results.values()) + " |")
    lines += ["| peak memory of the process, MB | " + " | ".join(f"{i['peak_mb']:.0f}" for _, i in results.values()) + " |"]

    exact_time, mean_error, max_error = paper_band_accuracy(sample_vertices)
    lines += [
        "",
        f"## PAPER_BODY banded (exact within {PAPER_BODY.exact_band}) against exact, {next(iter(results))} vertices",
        "",
        f"Exact grid (KD-tree everywhere): {exact_time * 1000:.0f} ms.",
        "",
        "| channel | " + " | ".join(str(c) for c in range(PAPER_BODY.channels)) + " |",
        "|---|" + "---|" * PAPER_BODY.channels,
        "| mean abs error | " + " | ".join(f"{e:.1e}" for e in mean_error) + " |",
        "| max abs error | " + " | ".join(f"{e:.1e}" for e in max_error) + " |",
        "",
        "## Compact grid size choice (4 clamped channels, exact)",
        "",
        "| grid, points | ms |",
        "|---|---|",
    ]
    lines += [f"| {label} | {seconds * 1000:.1f} |" for label, seconds in compact_choices(sample_compact)]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
