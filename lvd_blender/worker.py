"""The fitting process: Fit's work (lvd_blender.fit_work, and the preferences' check of a body-model file) in
a Python process of its own, so that importing PyTorch and fitting never hold the Python lock of Blender's
process (its UI would stall), and a crash or a cancel cannot take Blender with it.

One process serves a Blender session's fits (PyTorch is imported once): started at the first fit with Blender's
own Python (sys.executable) and Blender's sys.path, it imports this package's modules without the package's
__init__ (which needs bpy). Each request is a line on its stdin naming a pickled request file (items, settings,
the job factory), served one at a time in the order they came; it answers with JSON lines on its stdout:
progress, each item's result (a pickle file written whole beside the request, then named) or its one-line
failure, then "finished". Cancel kills the process (a result being written is never named, and the request's
folder goes); the next fit starts a new one. It ends when its stdin closes, which happens however Blender ends.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path

from .core import cuda_status as loaded_cuda_status
from .jobs import Done, Failed, Finished, Item, Progress, drain, one_line

# Job factories the process runs: (items, settings, post) -> jobs.Job
FIT_JOB = f"{__package__}.fit_work:fit_job"
MODEL_FILE_JOB = f"{__package__}.fit_work:model_file_job"
# The process's entry: the package (named as in Blender) from its folder, without running its __init__.
BOOTSTRAP = """
import importlib, json, sys, types
package, folder, paths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path[:] = paths
parts = package.split(".")
for depth in range(1, len(parts) + 1):
    module = types.ModuleType(".".join(parts[:depth]))
    module.__path__ = [folder] if depth == len(parts) else []
    sys.modules[module.__name__] = module
importlib.import_module(package + ".worker").serve()
"""
NO_CONSOLE_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console pops up for the process


# -- Blender's side ---------------------------------------------------------------------------------------
class FittingProcess:
    """The process and a thread reading its answers, which go to the jobs in the order they were submitted."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="lvd-fitting-"))
        self.errors = self.folder / "errors.log"  # its stderr: tracebacks, native libraries' output
        with open(self.errors, "wb") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, __package__, str(Path(__file__).parent), json.dumps(sys.path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, creationflags=NO_CONSOLE_WINDOW,
            )  # fmt: skip
        self.jobs: deque[WorkerJob] = deque()  # submitted and not finished: the first one is under way
        self.cuda_status = ""  # its core.cuda_status line, once it has imported PyTorch
        self._lock = threading.Lock()
        self._ended = False
        threading.Thread(target=self._read, name="lvd-fitting-process", daemon=True).start()

    def alive(self) -> bool:
        return not self._ended and self.process.poll() is None

    def submit(self, job: WorkerJob, request: Path) -> None:
        with self._lock:
            if self._ended:  # it ended meanwhile: the job ends as it would have
                job.ended(self.exit_reason())
                return
            self.jobs.append(job)
        line = json.dumps({"request": str(request), "path": sys.path}) + "\n"
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except OSError:  # it just ended: the reader ends the job
            pass

    def kill(self) -> None:
        self.process.kill()

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            if "cuda" in message:
                self.cuda_status = message["cuda"]
            elif self.jobs and self.jobs[0].receive(message):
                with self._lock:
                    self.jobs.popleft()
        self.process.wait()
        with self._lock:
            self._ended = True
            jobs, self.jobs = list(self.jobs), deque()
        for job in jobs:
            job.ended(self.exit_reason())
        shutil.rmtree(self.folder, ignore_errors=True)

    def exit_reason(self) -> str:
        """One line: the last line the process wrote to stderr (a traceback's ends with the error), else its exit code."""
        try:
            lines = self.errors.read_bytes()[-4000:].decode(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"the fitting process stopped: {lines[-1].strip() if lines else f'exit code {self.process.returncode}'}"


PROCESS: FittingProcess | None = None


def fitting_process() -> FittingProcess:
    """The session's fitting process, started when there is none (or it ended)."""
    global PROCESS
    if PROCESS is None or not PROCESS.alive():
        PROCESS = FittingProcess()
    return PROCESS


def cuda_status() -> str:
    """The preferences' CUDA line: the fitting process's, once it has loaded PyTorch (Blender's never does)."""
    return PROCESS.cuda_status if PROCESS is not None and PROCESS.cuda_status else loaded_cuda_status()


def stop_fitting_process() -> None:
    """End the fitting process (the extension is being disabled)."""
    global PROCESS
    if PROCESS is not None:
        PROCESS.kill()
        PROCESS.process.wait(10)
        PROCESS = None


class WorkerJob:
    """A jobs.Job run by the fitting process, with the same interface and messages (on `messages`)."""

    def __init__(self, items: list[Item], settings, job_factory: str = FIT_JOB):
        self.items = items
        self.settings = settings
        self.job_factory = job_factory  # "module:function" importable in the process: (items, settings, post) -> Job
        self.messages: queue.Queue = queue.Queue()
        self.stopped = False
        self.process: FittingProcess | None = None
        self.folder: Path | None = None
        self._reported = 0  # items done or failed so far (a job reports them in order)
        self._finished = threading.Event()

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lvd-fit-"))
        request = self.folder / "request.pickle"
        with open(request, "wb") as file:
            pickle.dump({"items": self.items, "settings": self.settings, "job": self.job_factory}, file, pickle.HIGHEST_PROTOCOL)
        self.process = fitting_process()
        self.process.submit(self, request)

    def run(self) -> None:
        """Start and wait for the end (no event loop: scripts, background mode)."""
        self.start()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        self._finished.wait(timeout)

    def finished(self) -> bool:
        return self._finished.is_set()

    def stop(self) -> None:
        """Cancel now: the process is killed (and with it any job queued behind); items already finished stay."""
        self.stopped = True
        if self.process is not None and not self._finished.is_set():
            self.process.kill()

    def drain(self) -> list:
        """Every message received so far (main thread)."""
        return drain(self.messages)

    def receive(self, message: dict) -> bool:
        """One answer of the process (its reader thread); True when it ends the job."""
        if "progress" in message:
            self.messages.put(Progress(message["progress"], message["text"]))
        elif "done" in message:
            self._reported += 1
            try:
                with open(message["file"], "rb") as file:
                    self.messages.put(Done(message["done"], pickle.load(file)))
            except Exception as error:  # noqa: BLE001 (e.g. the disk filled up: that item failed, the job goes on)
                self.messages.put(Failed(message["done"], f"its result could not be read: {one_line(error)}"))
        elif "failed" in message:
            self._reported += 1
            self.messages.put(Failed(message["failed"], message["message"]))
        elif "finished" in message:
            self._finish(message["finished"] or self.stopped)
            return True
        return False

    def ended(self, reason: str) -> None:
        """The process ended before the job did: killed by stop(), else each item left fails with `reason`."""
        if not self.stopped:
            for item in self.items[self._reported :]:
                self.messages.put(Failed(item.label, reason))
        self._finish(self.stopped)

    def _finish(self, cancelled: bool) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.messages.put(Finished(cancelled))
        self._finished.set()


# -- the fitting process ----------------------------------------------------------------------------------
def serve() -> None:
    """The process's loop: one request at a time, until stdin closes."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # the answers' own pipe end ...
    os.dup2(2, 1)  # ... so that what libraries print (C code included) goes to stderr instead
    sys.stdout = sys.stderr
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=_read_requests, args=(requests,), daemon=True).start()
    while True:
        request = requests.get()
        sys.path.extend(entry for entry in request["path"] if entry not in sys.path)  # e.g. dependencies installed since
        _serve(Path(request["request"]), lambda answer: answers.write(json.dumps(answer) + "\n"))


def _read_requests(requests: queue.Queue) -> None:
    for line in sys.stdin.buffer:
        requests.put(json.loads(line))
    os._exit(0)  # stdin closed: Blender ended or let go of this process


def _serve(request_file: Path, answer) -> None:
    with open(request_file, "rb") as file:
        request = pickle.load(file)
    results = 0

    def post(message) -> None:
        nonlocal results
        if isinstance(message, Progress):
            answer({"progress": message.fraction, "text": message.text})
        elif isinstance(message, Done):
            results += 1
            path = request_file.with_name(f"result-{results}.pickle")
            partial = path.with_name(path.name + ".partial")
            with open(partial, "wb") as file:
                pickle.dump(message.result, file, pickle.HIGHEST_PROTOCOL)
            os.replace(partial, path)  # named once whole
            answer({"done": message.label, "file": str(path)})
        elif isinstance(message, Failed):
            answer({"failed": message.label, "message": message.message})
        elif isinstance(message, Finished):
            if "torch" in sys.modules:  # a job loaded it: CUDA's state is known
                answer({"cuda": loaded_cuda_status()})
            answer({"finished": message.cancelled})

    module, function = request["job"].split(":")
    try:
        job = getattr(importlib.import_module(module), function)(request["items"], request["settings"], post)
    except Exception as error:  # noqa: BLE001 (e.g. a missing module: each item says so)
        for item in request["items"]:
            post(Failed(item.label, one_line(error)))
        post(Finished(cancelled=False))
        return
    job.run()
