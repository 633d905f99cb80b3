"""The fitting process (lvd_blender.worker): jobs run in a Python process of its own, reused across fits, with
progress, results (files), one-line failures, cancel by kill, and death with its parent. The jobs here are cheap
stand-ins (this module is imported by the process too: nothing at its top may need bpy)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lvd_blender import jobs, worker

JOB = f"{__name__}:stand_in_job"
ROOT = Path(__file__).resolve().parents[1]


def stand_in_job(items, settings, post=None):
    """Per item: progress at half way, then by its inputs: a number -> {"doubled": array, "pid": the process's},
    "bad" -> a bad-input error, "crash" -> the process dies after an error line, "hang" -> waits a minute,
    "torch" -> imports PyTorch."""

    def work(group, progress, cancel):
        [item] = group
        progress(0.5, "halfway")
        if item.inputs == "bad":
            raise ValueError("bad is not a number: give a number")
        if item.inputs == "crash":
            print("MemoryError: the stand-in ran out of memory", file=sys.stderr, flush=True)
            os._exit(3)
        if item.inputs == "hang":
            time.sleep(60)
        if item.inputs == "torch":
            import torch  # noqa: F401

            return [{}]
        return [{"doubled": np.full(3, 2.0 * item.inputs), "pid": os.getpid(), "settings": settings}]

    return jobs.Job(items, work, 1, post)


def run(*inputs, settings=None):
    job = worker.WorkerJob([jobs.Item(f"item{k}", value) for k, value in enumerate(inputs)], settings, JOB)
    job.start()
    job.join(60)
    return job, job.drain()


@pytest.fixture(autouse=True)
def fresh_process():
    worker.stop_fitting_process()
    yield
    worker.stop_fitting_process()


def test_jobs_run_in_one_process_that_serves_every_fit():
    first, messages = run(1.5, 2.0, settings={"device": "cpu"})
    assert first.folder is not None and not first.folder.exists()  # the request and result files are gone
    done = [m for m in messages if isinstance(m, jobs.Done)]
    assert [m.label for m in done] == ["item0", "item1"] and np.array_equal(done[1].result["doubled"], [4.0, 4.0, 4.0])
    assert done[0].result["settings"] == {"device": "cpu"}
    progress = [m for m in messages if isinstance(m, jobs.Progress)]
    assert [(round(m.fraction, 2), m.text) for m in progress] == [(0.25, "item0: halfway"), (0.75, "item1: halfway")]
    assert messages[-1] == jobs.Finished(cancelled=False)
    pid = done[0].result["pid"]
    assert pid != os.getpid()
    _, again = run(3.0)
    assert [m.result["pid"] for m in again if isinstance(m, jobs.Done)] == [pid]  # no second PyTorch import


@pytest.mark.slow
def test_the_process_tells_cudas_state_once_a_job_has_loaded_pytorch():
    run(1.0)
    assert worker.PROCESS.cuda_status == ""  # the stand-in loads no PyTorch
    run("torch")
    assert worker.PROCESS.cuda_status in ("CUDA: not available (CPU)", f"CUDA: {torch_device_name()}")
    assert worker.cuda_status() == worker.PROCESS.cuda_status  # what the preferences show


def torch_device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def test_a_job_submitted_while_another_runs_waits_its_turn():
    first, second = (worker.WorkerJob([jobs.Item(label, value)], None, JOB) for label, value in (("first", 1.0), ("second", 2.0)))
    first.start()
    second.start()
    second.join(60)
    assert first.finished() and second.finished()
    assert [[m.label for m in job.drain() if isinstance(m, jobs.Done)] for job in (first, second)] == [["first"], ["second"]]


def test_a_failing_item_reports_one_line_and_the_rest_are_fitted():
    _, messages = run("bad", 1.0)
    assert jobs.Failed("item0", "bad is not a number: give a number") in messages
    assert [m.label for m in messages if isinstance(m, jobs.Done)] == ["item1"]


def test_a_crash_fails_the_items_left_with_its_last_error_line_and_the_next_fit_starts_a_new_process():
    _, messages = run(1.0, "crash", 2.0)
    reason = "the fitting process stopped: MemoryError: the stand-in ran out of memory"
    assert [m for m in messages if not isinstance(m, jobs.Progress)][1:] == [
        jobs.Failed("item1", reason), jobs.Failed("item2", reason), jobs.Finished(cancelled=False)]  # fmt: skip
    _, again = run(1.0)
    assert [m.label for m in again if isinstance(m, jobs.Done)] == ["item0"]


def test_stop_kills_the_process_at_once_and_keeps_the_finished_items():
    job = worker.WorkerJob([jobs.Item("item0", 1.0), jobs.Item("item1", "hang")], None, JOB)
    job.start()
    messages = []
    deadline = time.monotonic() + 60
    while not any(isinstance(m, jobs.Done) for m in messages) and time.monotonic() < deadline:
        time.sleep(0.05)
        messages += job.drain()
    process = job.process.process
    started = time.monotonic()
    job.stop()
    job.join(10)
    assert time.monotonic() - started < 5
    messages += job.drain()
    assert [m.label for m in messages if isinstance(m, jobs.Done)] == ["item0"]
    assert not any(isinstance(m, jobs.Failed) for m in messages) and messages[-1] == jobs.Finished(cancelled=True)
    assert process.poll() is not None and not job.folder.exists()


PARENT = """
import sys, time
from lvd_blender import worker
print(worker.fitting_process().process.pid, flush=True)
time.sleep(1.0)
"""


@pytest.mark.slow
def test_the_process_ends_with_blender():
    """Blender (here a plain Python that started the process) exits without ending it: it ends too."""
    parent = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent to read its exit does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_disabling_the_extension_ends_the_process():
    """unregister (operators.stop_running_fits) ends it with stop_fitting_process."""
    run(1.0)
    process = worker.PROCESS.process
    worker.stop_fitting_process()
    assert process.poll() is not None and worker.PROCESS is None
