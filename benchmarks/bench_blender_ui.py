"""How long Blender's main thread is held while Fit runs (the UI stalls for that long).

Run: .venv/bin/python benchmarks/bench_blender_ui.py  -> prints a table and writes benchmarks/results_blender_ui.md.
Headless bpy, 1 torch thread (the fit's), the extension's modules from this tree. Measured:
- the longest main-thread step of Fit's modal loop (lvd_blender.fitting.FitRun.handle on each TIMER event)
  while a worker fits 3 scans with a slow stand-in for the pipeline that returns real Anny bodies (13,718
  vertices, 104 bones), building each character in steps (as shipped) and in one go (as before);
- copying a scan's vertices at the click (fitting.scan_item) for the real sample scan and a 1 M-vertex mesh;
- how late a 10 ms main-thread tick wakes while the worker runs the real pipeline (the worker holds Python's lock
  in C calls: extension-module loading, some numpy), on its first fit in the process (imports) and later ones.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import blender_support  # noqa: E402  (sets Blender's user folder before bpy)
import bpy  # noqa: E402
import numpy as np  # noqa: E402

from lvd_blender import fitting, properties  # noqa: E402
from provenance import provenance  # noqa: E402

SCAN = ROOT.parent / "shared" / "data" / "scans" / "rp_dennis_posed_004_30k.obj"
TIMER_S = 0.1  # the modal operator's timer period (operators.TIMER_STEP_S)


def register() -> None:
    for cls in properties.CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()


class SlowPipeline:
    """fit_scans that sleeps `seconds` per scan and returns a real Anny body at the scan's centroid."""

    def __init__(self, seconds: float):
        import torch

        from lvd_core.body import load_body_model

        self.seconds = seconds
        body = load_body_model("anny")
        self.params = body.zero_params(1)
        self.params.shape = torch.full_like(self.params.shape, 0.5)
        self.vertices = body(self.params).vertices[0].double().numpy()

    def fit_scans(self, sources, *, progress, cancel, **options):
        results = []
        for vertices, _, _ in sources:
            time.sleep(self.seconds)
            progress(1.0, "done")
            matrix = np.eye(4)
            matrix[:3, 3] = vertices.mean(0)
            results.append(SimpleNamespace(body_name="anny", params=self.params, input_from_model=matrix, units="m",
                                           vertices_input=self.vertices + vertices.mean(0), residual_mm=1.0, doubtful=False,
                                           quality_label=lambda short=False: "1.0 mm"))  # fmt: skip
        return results


def modal_steps(budget_s: float | None, scans: int = 3) -> list[float]:
    """Seconds of each TIMER event's handle() while the worker fits `scans` scans with SlowPipeline."""
    blender_support.reset_scene()
    fitting.pipeline = lambda: SlowPipeline(1.0)
    items = [fitting.Item(f"Scan {k}", {"kind": "scan", "vertices": np.random.default_rng(k).normal(size=(500, 3)) + [k, 0, 1],
                                        "faces": None, "body": "anny"}) for k in range(scans)]  # fmt: skip
    run = fitting.FitRun(items, fitting.FitSettings("anny", None, None, "cpu", None, True, False), skipped=[])
    run.job.start()
    steps = []
    while True:
        time.sleep(TIMER_S)
        start = time.perf_counter()
        finished = run.handle(run.job.drain(), bpy.context, budget_s)
        steps.append(time.perf_counter() - start)
        if finished:
            assert len(run.characters) == scans
            return steps


def snapshot_seconds(obj) -> float:
    start = time.perf_counter()
    fitting.scan_item(obj, bpy.context, fitting.FitSettings("anny", None, None, "cpu", None, True, False))
    return time.perf_counter() - start


def dense_mesh(vertex_count: int, triangles: bool):
    side = int(np.sqrt(vertex_count))
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=side - 1, y_subdivisions=side - 1, size=1.8)
    grid = bpy.context.active_object
    if triangles:  # as scans are
        grid.modifiers.new("Triangulate", "TRIANGULATE")
        bpy.ops.object.modifier_apply(modifier="Triangulate")
    return grid


def tick_lateness(fits: int) -> list[float]:
    """Worst lateness (s) of a 10 ms main-thread tick during each of `fits` real fits of the sample scan,
    the first one in a process that has imported nothing of the pipeline yet."""
    import trimesh

    mesh = trimesh.load(SCAN, force="mesh")
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    worst = []
    for _ in range(fits):
        done = threading.Event()

        def work():
            from lvd_core.devices import set_torch_threads
            from lvd_core.pipeline import fit_scans

            set_torch_threads(1)
            fit_scans([(vertices, faces, "scan")], up="y")
            done.set()

        threading.Thread(target=work).start()
        late, last = 0.0, time.perf_counter()
        while not done.is_set():
            time.sleep(0.01)
            now = time.perf_counter()
            late, last = max(late, now - last - 0.01), now
        worst.append(late)
    return worst


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ticks":
        print(" ".join(f"{late:.3f}" for late in tick_lateness(2)))
        return
    register()
    load = open("/proc/loadavg").read().split()[0]
    rows = []
    for label, budget in (("in steps (as shipped)", fitting.BUILD_BUDGET_S), ("in one go (before)", None)):
        steps = modal_steps(budget)
        rows.append((f"modal loop, characters built {label}", f"{max(steps) * 1000:.0f}", f"{len(steps)} TIMER events"))
    blender_support.reset_scene()
    bpy.ops.wm.obj_import(filepath=str(SCAN))
    real = bpy.context.selected_objects[0]
    rows.append(("copying the scan at the click, sample scan", f"{snapshot_seconds(real) * 1000:.0f}", f"{len(real.data.vertices):,} vertices"))
    for triangles, faces in ((True, "triangles"), (False, "quads")):
        grid = dense_mesh(1_000_000, triangles)
        rows.append((f"copying the scan at the click, dense mesh of {faces}", f"{snapshot_seconds(grid) * 1000:.0f}",
                     f"{len(grid.data.vertices):,} vertices"))  # fmt: skip
    ticks = subprocess.run([sys.executable, __file__, "--ticks"], capture_output=True, text=True, check=True, cwd=ROOT)
    first, later = (float(x) for x in ticks.stdout.split()[-2:])
    rows.append(("worker's real fit: worst lateness of a 10 ms tick, first fit (imports)", f"{first * 1000:.0f}", "sample scan"))
    rows.append(("worker's real fit: worst lateness of a 10 ms tick, later fits", f"{later * 1000:.0f}", "sample scan"))

    table = ["| main-thread step | longest (ms) | of |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    text = "\n".join([
        "# Blender: how long the main thread is held while Fit runs",
        "",
        f"`benchmarks/bench_blender_ui.py`; {provenance([ROOT / 'weights' / 'anny-body-scan' / 'checkpoint.pt'])} Headless bpy "
        f"{bpy.app.version_string}, x86_64, 2 cores shared with other jobs (load average {load} at the start).",
        "",
        *table,
        "",
        "Notes",
        f"- The modal loop's step is FitRun.handle on one TIMER event (every {TIMER_S} s): it applies the worker's "
        "messages and builds characters; in steps it stops after fitting.BUILD_BUDGET_S of work (plus the step under way).",
        "- Copying the scan happens once, when Fit is clicked, before the worker starts.",
        "- The tick lateness is time the worker kept Python's lock in C code; the first fit's is importing torch, "
        "Anny and the pipeline (loading extension modules holds the lock), once per Blender session.",
        "",
    ])
    (ROOT / "benchmarks" / "results_blender_ui.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
