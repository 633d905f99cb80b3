"""How long Blender's main thread is held while Fit runs (the UI stalls for that long).

Run: .venv/bin/python benchmarks/bench_blender_ui.py  -> prints a table and writes benchmarks/results_blender_ui.md.
Headless bpy, 1 torch thread (the fit's), the extension's modules from this tree. Measured:
- the longest main-thread step of Fit's modal loop (lvd_blender.fitting.FitRun.handle on each TIMER event)
  while a thread fits 3 scans with a slow stand-in for the pipeline that returns real Anny bodies (13,718
  vertices, 104 bones), building each character in steps (as shipped) and in one go (as before);
- copying a scan's vertices at the click (fitting.scan_item) for the real sample scan and a 1 M-vertex mesh;
- real fits of the sample scan driven as Fit's modal loop drives them (a 10 ms tick: sleep, then FitRun.handle),
  the first of a session and a later one, with the fit in the fitting process (lvd_blender.worker, as shipped) or
  on a thread of Blender's process (before: that thread holds Python's lock in C calls, extension-module
  loading above all): how late the tick wakes at worst, and the longest handle step (building the character).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import blender_support  # noqa: E402  (sets Blender's user folder before bpy)
import bpy  # noqa: E402
import numpy as np  # noqa: E402

from lvd_blender import fit_work, fitting, properties, worker  # noqa: E402
from provenance import provenance  # noqa: E402

SCAN = ROOT.parent / "shared" / "data" / "scans" / "rp_dennis_posed_004_30k.obj"
TIMER_S = 0.1  # the modal operator's timer period (operators.TIMER_STEP_S)
TICK_S = 0.01  # the tick of the real fits' loop: finer than TIMER_S, to see short stalls
SETTINGS = fitting.FitSettings("anny", None, None, "cpu", None, True, False)


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
    fit_work.pipeline = lambda: SlowPipeline(1.0)
    fitting.fit_job = fit_work.fit_job  # on a thread: the stand-in is defined here
    items = [fitting.Item(f"Scan {k}", {"kind": "scan", "vertices": np.random.default_rng(k).normal(size=(500, 3)) + [k, 0, 1],
                                        "faces": None, "body": "anny"}) for k in range(scans)]  # fmt: skip
    run = fitting.FitRun(items, SETTINGS, skipped=[])
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
    fitting.scan_item(obj, bpy.context, SETTINGS)
    return time.perf_counter() - start


def dense_mesh(vertex_count: int, triangles: bool):
    side = int(np.sqrt(vertex_count))
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=side - 1, y_subdivisions=side - 1, size=1.8)
    grid = bpy.context.active_object
    if triangles:  # as scans are
        grid.modifiers.new("Triangulate", "TRIANGULATE")
        bpy.ops.object.modifier_apply(modifier="Triangulate")
    return grid


def idle_lateness(busy_process: bool, seconds: float = 10.0) -> float:
    """Worst lateness (s) of the tick with nothing else running in this process, alone or beside another process
    keeping a core busy (as the fitting process does): the machine's own noise."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_process else None
    late, last, end = 0.0, time.perf_counter(), time.perf_counter() + seconds
    while last < end:
        time.sleep(TICK_S)
        now = time.perf_counter()
        late, last = max(late, now - last - TICK_S), now
    if busy is not None:
        busy.kill()
        busy.wait()
    return late


def real_fits(where: str, fits: int = 2) -> list[tuple[float, float]]:
    """(worst tick lateness, longest handle step) in seconds for each of `fits` real fits of the sample scan, the
    first one in a process that has imported nothing of the pipeline; the fit in the fitting process ("process")
    or on a thread of this one ("thread")."""
    if where == "thread":
        fitting.fit_job = fit_work.fit_job
    register()
    bpy.ops.wm.obj_import(filepath=str(SCAN))
    [scan] = bpy.context.selected_objects
    item = fitting.scan_item(scan, bpy.context, SETTINGS)
    measured = []
    for _ in range(fits):
        run = fitting.FitRun([item], SETTINGS, skipped=[])
        run.job.start()
        late = step = 0.0
        last = time.perf_counter()
        while True:
            time.sleep(TICK_S)
            now = time.perf_counter()
            late = max(late, now - last - TICK_S)
            finished = run.handle(run.job.drain(), bpy.context, fitting.BUILD_BUDGET_S)
            last = time.perf_counter()
            step = max(step, last - now)
            if finished:
                break
        assert len(run.characters) == 1, run.summary()
        measured.append((late, step))
    if where == "process":
        print(f"rss_mb {resident_mb(worker.PROCESS.process.pid):.0f}")
    worker.stop_fitting_process()
    return measured


def resident_mb(pid: int) -> float:
    """The process's resident memory (Linux), MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--real-fits":
        print(" ".join(f"{late:.3f} {step:.3f}" for late, step in real_fits(sys.argv[2])))
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
    for busy, beside in ((False, "alone"), (True, "beside a busy process")):
        rows.append((f"no fit, {beside}: worst lateness of a {TICK_S * 1000:.0f} ms tick (the machine's noise)",
                     f"{idle_lateness(busy) * 1000:.0f}", "10 s"))
    for where, label in (("process", "in the fitting process (as shipped)"), ("thread", "on a thread of Blender's process (before)")):
        fits = subprocess.run([sys.executable, __file__, "--real-fits", where], capture_output=True, text=True, check=True, cwd=ROOT)
        first_late, first_step, later_late, later_step = (float(x) * 1000 for x in fits.stdout.split()[-4:])
        if where == "process":
            rss = fits.stdout.split("rss_mb ")[1].split()[0]
            rows.append(("memory the fitting process keeps between fits (resident, MB)", rss, "after 2 fits of the sample scan"))
        for fit, late, step in (("first fit of the session", first_late, first_step), ("later fit", later_late, later_step)):
            rows.append((f"real fit {label}, {fit}: worst lateness of a {TICK_S * 1000:.0f} ms tick", f"{late:.0f}", "sample scan"))
            rows.append((f"real fit {label}, {fit}: longest handle step", f"{step:.0f}", "sample scan"))

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
        "- The tick lateness is time another thread of Blender's process kept Python's lock: on a thread, the fit "
        "itself (its first fit imports torch, Anny and the pipeline, and loading extension modules holds the lock); "
        "with the fitting process, only the thread that reads its answers (a result file unpickled). The first fit "
        "of a session starts the fitting process; later fits reuse it. The machine's noise rows are the floor: the same "
        "tick with no fit.",
        "- The handle step is the modal loop's own work on one tick (building the character in steps, "
        "fitting.BUILD_BUDGET_S plus the step under way).",
        "",
    ])
    (ROOT / "benchmarks" / "results_blender_ui.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
