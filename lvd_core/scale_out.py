"""`lvd batch --ray`: a batch's inputs fitted on a Ray cluster (https://docs.ray.io) instead of this machine's
worker processes.

Each worker is a Ray actor that loads the body model and networks once, then fits one input (or, on a GPU, a
group of scans fitted together) per call with the local batch's own steps (`BatchSteps`, given by lvd_core.cli),
so outputs, resume rules and failures are those of `lvd batch`. Inputs and --out must be on storage every node
sees at the same path (a shared folder); each file is written whole or not at all, from whichever node fits it.
Ray is an optional dependency, imported only here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .devices import set_torch_threads

RAY_REQUIREMENT = "ray==2.60.0"
# Cluster addresses ray.init takes: auto (a running cluster), local (a new one here), HOST:PORT, ray://HOST:PORT.
ADDRESS_PATTERN = re.compile(r"auto|local|(ray://)?(\[[0-9A-Fa-f:.]+\]|[\w.\-]+):\d+")
# Attempts beyond the first of a call whose worker died (out of memory, a lost node): the worker is restarted.
RETRIES = 2


class ClusterError(Exception):
    """Ray is missing or the cluster cannot run the batch as asked (a usage or setup problem)."""


@dataclass(frozen=True)
class BatchSteps:
    """The local batch's steps a worker runs (module-level functions, so Ray pickles them by name):
    check_setup(fit_options, sources) loads what the fits need; fit_one(source, stem, settings, debug) and
    fit_many(jobs, settings, debug) fit into settings.out and return Outcomes; failed(source, message) is the
    Outcome of an input that could not be fitted; is_photo(path) tells photos from scans."""

    check_setup: Callable
    fit_one: Callable
    fit_many: Callable
    failed: Callable
    is_photo: Callable


def cluster_address(text: str) -> str:
    """argparse type of --ray's ADDRESS ("" when --ray is given alone: the cluster of RAY_ADDRESS or the one
    `ray start` started here, else a new local one)."""
    import argparse

    if text and not ADDRESS_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected auto, local, HOST:PORT or ray://HOST:PORT, got {text!r} (an input? put --ray after the inputs or write --ray=ADDRESS)"
        )
    return text


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray: pip install {RAY_REQUIREMENT} (or lvd-core[ray])") from None
    return ray


class FitWorker:
    """One Ray actor: the body model and the networks the batch's inputs need loaded once (the steps'
    check_setup fills the per-process caches), then one fit call after another."""

    def __init__(self, steps: BatchSteps, settings, threads: int, sources: list[Path]):
        """settings: the batch's lvd_core.cli.FitSettings; sources: an input of each kind (scan, photo) the
        batch has, for the networks to load."""
        set_torch_threads(threads)
        self.steps, self.settings = steps, settings
        steps.check_setup(settings.fit_options, sources)

    def fit(self, jobs: list[tuple[int, Path, str]], debug: bool) -> list[tuple]:
        """(index, source, stem) jobs -> (index, Outcome): one input with fit_one, several together with
        fit_many; inputs or an output folder this node cannot see fail with a note saying so."""
        unseen = [(index, unseen_note(source, self.settings.out)) for index, source, _ in jobs]
        outcomes = [(index, self.steps.failed(str(source), note)) for (index, note), (_, source, _) in zip(unseen, jobs) if note]
        visible = [job for job, (_, note) in zip(jobs, unseen) if not note]
        if len(visible) == 1:
            index, source, stem = visible[0]
            return outcomes + [(index, self.steps.fit_one(source, stem, self.settings, debug))]
        return outcomes + (self.steps.fit_many(visible, self.settings, debug) if visible else [])


def unseen_note(source: Path, out: Path) -> str:
    """Why this node cannot fit `source` into `out` (it does not see them), or ""."""
    for path, what in ((source, "the input"), (out, "the --out folder")):
        if not path.exists():
            return f"{what} {path} is not visible on node {socket.gethostname()}: put inputs and --out on storage every node sees"
    return ""


def fit_on_ray(steps: BatchSteps, todo: list[tuple[int, Path, str]], settings, args, report: Callable) -> None:
    """Fit the (index, source, stem) inputs with `steps` on the Ray cluster at args.ray, calling report(index, Outcome) as
    each ends. Workers: --workers, else one per GPU (CUDA; groups of --batch-size scans per call) or per
    --threads CPUs of the cluster. A worker that dies mid-fit is restarted and the call tried again (RETRIES);
    on Ctrl-C the workers are killed (no file is left half-written: outputs are renamed into place whole).
    Uses the Ray connection this process has, else connects (or starts a local instance) and shuts it down at
    the end. Raises ClusterError when Ray is missing or no node has --threads CPUs."""
    if not todo:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=args.ray or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        from .devices import GPU_BATCH

        gpus = settings.fit_options["device"] != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        jobs = job_groups(todo, args.batch_size or (GPU_BATCH if gpus else 1))
        largest_node = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if args.threads > largest_node:  # its workers would wait for ever
            raise ClusterError(f"--threads {args.threads}: no node of the Ray cluster has that many CPUs (at most {largest_node:g})")
        slots = int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // (1 if gpus else args.threads))
        actor_class = ray.remote(FitWorker).options(
            num_cpus=args.threads, num_gpus=1 if gpus else 0,
            max_restarts=(RETRIES + 1) * len(jobs), max_task_retries=RETRIES,  # bounded: a worker that dies at start
        )  # fmt: skip
        shared_settings = dataclasses.replace(settings, out=settings.out.resolve())  # workers' current folders differ
        sources = list({steps.is_photo(source): source for job in jobs for _, source, _ in job}.values())  # one per kind
        workers = [actor_class.remote(steps, shared_settings, args.threads, sources) for _ in range(max(1, min(args.workers or slots, len(jobs))))]
        given = {index: str(source) for index, source, _ in todo}

        def report_as_given(index: int, outcome) -> None:
            report(index, dataclasses.replace(outcome, source=given[index]))

        try:
            run_jobs(ray, workers, jobs, steps, getattr(args, "debug", False), report_as_given)
        finally:
            for worker in workers:
                ray.kill(worker, no_restart=True)  # on Ctrl-C: stops the fits in flight
    finally:
        if started_here:
            ray.shutdown()


def job_groups(todo: list[tuple[int, Path, str]], size: int) -> list[list[tuple[int, Path, str]]]:
    """The inputs in calls of `size`, their paths absolute (a worker's current folder is not this one's)."""
    absolute = [(index, source.resolve(), stem) for index, source, stem in todo]
    return [absolute[first : first + size] for first in range(0, len(absolute), size)]


def run_jobs(ray, workers: list, jobs: list[list[tuple[int, Path, str]]], steps: BatchSteps, debug: bool, report: Callable) -> None:
    """Keep each worker on one call until every job has ended; a call whose worker died for good fails its
    inputs (the others go on). Calls still running when this stops (Ctrl-C) are cancelled, not retried."""
    queue = deque(jobs)
    idle = list(workers)
    in_flight = {}
    try:
        while queue or in_flight:
            while idle and queue:
                worker, job = idle.pop(), queue.popleft()
                in_flight[worker.fit.remote(job, debug)] = (worker, job)
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            worker, job = in_flight.pop(ready)
            idle.append(worker)
            try:
                outcomes = ray.get(ready)
            except ray.exceptions.RayError as error:
                message = worker_death_note(error)
                outcomes = [(index, steps.failed(str(source), message)) for index, source, _ in job]
            for index, outcome in outcomes:
                report(index, outcome)
    finally:
        for call in in_flight:
            ray.cancel(call)


def worker_death_note(error: Exception) -> str:
    """Why a call ended without a result, in one line: Ray's message ends with the reason (the exception that
    stopped the worker starting, or how its process ended)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    if getattr(error, "actor_init_failed", False):
        hint = " (install lvd-core, this version, on every node)" if "No module named" in reason else ""
        return f"a Ray worker could not start: {reason}{hint}"
    return f"its Ray worker died ({RETRIES + 1} tries): {reason}"
