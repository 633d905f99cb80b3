"""Install Dependencies: PyTorch into the extension's own site-packages folder, with pip in a background process.

The CPU build by default (PyTorch's CPU wheel index); the CUDA build on request. pip installs into a staging
folder that replaces the site-packages folder only when pip succeeded, so a failed, cancelled or timed-out
install leaves the previous one as it was. LVD_WHEELHOUSE=DIR installs offline from a folder of wheels
(pip --no-index --find-links DIR); LVD_TORCH_INDEX=URL replaces the wheel index. No bpy here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

TORCH_REQUIREMENT = "torch==2.13.0"  # as requirements.txt
WHEELHOUSE_VARIABLE = "LVD_WHEELHOUSE"
INDEX_VARIABLE = "LVD_TORCH_INDEX"


@dataclass(frozen=True)
class TorchBuild:
    index_url: str
    size: str  # for the tooltip and the messages
    timeout_s: float


BUILDS = {
    "CPU": TorchBuild("https://download.pytorch.org/whl/cpu", "about 200 MB to download, 900 MB on disk", 30 * 60),
    "CUDA": TorchBuild("https://download.pytorch.org/whl/cu130", "about 3-4 GB to download, 6 GB on disk", 2 * 3600),
}


def wheelhouse() -> str | None:
    """The local folder of wheels to install from (LVD_WHEELHOUSE), or None for the wheel index."""
    return os.environ.get(WHEELHOUSE_VARIABLE) or None


def needs_network() -> bool:
    return wheelhouse() is None


def pip_command(target: str, build: str, python: str = sys.executable) -> list[str]:
    """pip installing `build` ("CPU" / "CUDA") PyTorch into the folder `target`."""
    folder = wheelhouse()
    source = ["--no-index", "--find-links", folder] if folder else ["--index-url", os.environ.get(INDEX_VARIABLE) or BUILDS[build].index_url]
    return [python, "-m", "pip", "install", "--target", target, "--no-input", "--disable-pip-version-check",
            *progress_option(), *source, TORCH_REQUIREMENT]  # fmt: skip


def command_line(command: list[str]) -> str:
    """`command` as the user would type it in this system's shell."""
    return subprocess.list2cmdline(command) if sys.platform == "win32" else shlex.join(command)


def progress_option() -> list[str]:
    """pip 24.1+ reports download bytes on its output with `--progress-bar raw`; older pip only its stages."""
    try:
        major, minor = (int(part) for part in metadata.version("pip").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return []
    return ["--progress-bar", "raw"] if (major, minor) >= (24, 1) else []


def pip_available() -> bool:
    try:
        metadata.version("pip")
    except metadata.PackageNotFoundError:
        return False
    return True


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver is installed (its nvidia-smi tool, or the Linux kernel module)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/gpus").is_dir()


# pip's output lines -> (fraction of the whole install, text for the UI); the download takes most of the time.
STAGES = (
    (re.compile(r"^(Collecting|Looking in) "), 0.02, "Finding PyTorch"),
    (re.compile(r"^(Downloading|Processing) \S*torch-\S+(?: \((?P<size>[^)]+)\))?"), 0.05, "Getting PyTorch"),
    (re.compile(r"^Installing collected packages"), 0.8, "Unpacking PyTorch"),
    (re.compile(r"^Successfully installed"), 0.98, "Installed"),
)
RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)")


class Installation:
    """One pip run in the background. The main thread calls poll() (or wait()) and reads `fraction`, `text`,
    and, once finished, `error` ("" on success)."""

    def __init__(self, target: Path, build: str):
        self.target = Path(target)
        self.staging = self.target.with_name(self.target.name + ".partial")
        self.build = build
        self.command = pip_command(str(self.staging), build)
        self.fraction, self.text = 0.0, "Starting pip"
        self.error: str | None = None  # None while running
        self.output: deque[str] = deque(maxlen=40)
        self._cancelled = False
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._deadline = 0.0
        self._getting_torch = False

    def start(self) -> "Installation":
        shutil.rmtree(self.staging, ignore_errors=True)
        self._deadline = time.monotonic() + BUILDS[self.build].timeout_s
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window popping up on Windows
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         errors="replace", creationflags=flags)  # fmt: skip
        self._reader = threading.Thread(target=self._read, name="lvd-pip-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            line = line.strip()
            if not line:
                continue
            raw = RAW_PROGRESS.match(line)
            if raw and self._getting_torch:
                done, total = int(raw.group(1)), max(int(raw.group(2)), 1)
                self.fraction = 0.05 + 0.75 * done / total
                self.text = f"Downloading PyTorch: {done / 1e6:.0f} of {total / 1e6:.0f} MB"
                continue
            self.output.append(line)
            for pattern, fraction, text in STAGES:
                match = pattern.match(line)
                if match:
                    self._getting_torch = fraction == 0.05
                    size = match.groupdict().get("size")
                    self.fraction, self.text = fraction, f"{text} ({size})" if size else text
                    break

    @property
    def running(self) -> bool:
        return self.error is None

    def cancel(self) -> None:
        self._cancelled = True
        self._stop()

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def poll(self) -> bool:
        """Check on pip (main thread); True once finished, with `error` set."""
        if self.error is not None:
            return True
        if self._process.poll() is None and time.monotonic() > self._deadline:
            self._stop()
            return self._finish(f"pip took longer than {BUILDS[self.build].timeout_s / 60:.0f} minutes and was stopped")
        if self._process.poll() is None:
            return False
        self._reader.join()
        if self._cancelled:
            return self._finish("cancelled: nothing was changed")
        if self._process.returncode != 0:
            problems = [line for line in self.output if line.startswith("ERROR")] or list(self.output) or ["no output"]
            return self._finish(f"pip failed: {problems[-1]}")
        self._replace_target()
        return self._finish("")

    def wait(self, step_s: float = 0.2) -> str:
        """Block until pip has finished (scripts and background mode); returns `error`."""
        while not self.poll():
            time.sleep(step_s)
        return self.error

    def _replace_target(self) -> None:
        previous = self.target.with_name(self.target.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        if self.target.exists():
            self.target.rename(previous)
        self.staging.rename(self.target)
        shutil.rmtree(previous, ignore_errors=True)

    def _finish(self, error: str) -> bool:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.fraction, self.text = (1.0, "Installed") if not error else (self.fraction, error)
        self.error = error
        return True
