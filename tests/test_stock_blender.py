"""The extension in a stock Blender: a fresh Python holding only bpy and what it pulls in (numpy, requests, ...),
none of the project's dependencies. The linux-x64 zip is installed with Blender's own installer, PyTorch with
the extension's own Install Dependencies from a local wheelhouse (offline), then Fit on the real sample scan
and on a sample photo must build skinned characters, the fits running in the fitting process (Blender's own
never imports PyTorch).

The stock Python and the wheelhouse are cached in .cache/stock-blender, keyed by what they hold."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import build

STOCK_REQUIREMENTS = ("bpy==5.0.1", "numpy==1.26.4")  # what Blender 5.0 ships that the extension relies on
CACHE = build.ROOT / ".cache" / "stock-blender"
# PyTorch's CPU index first (its 2.13.0+cpu outranks PyPI's CUDA build); pip skips it where it is unreachable.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
SCRIPT = Path(__file__).with_name("stock_blender_fit.py")


def torch_requirement() -> str:
    """The project's pinned torch (requirements.txt), which Install Dependencies installs."""
    return next(line.split("#")[0].strip() for line in (build.ROOT / "requirements.txt").read_text().splitlines()
                if re.match(r"torch==", line))  # fmt: skip


def cached_folder(name: str, key: str, make) -> Path:
    """CACHE/<name>-<hash of key>, made by `make(folder)` in a scratch folder first so that an interrupted
    run is never reused."""
    folder = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not folder.is_dir():
        scratch = folder.with_name(folder.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.parent.mkdir(parents=True, exist_ok=True)
        make(scratch)
        scratch.rename(folder)
    return folder


def make_stock_python(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + list(STOCK_REQUIREMENTS), check=True)


def make_wheelhouse(python: Path):
    def make(folder: Path) -> None:
        command = [str(python), "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
                   "--retries", "1", "--extra-index-url", TORCH_CPU_INDEX, "--dest", str(folder), torch_requirement()]  # fmt: skip
        subprocess.run(command, check=True)

    return make


@pytest.mark.slow
def test_fit_in_a_stock_blender(shared_data, tmp_path):
    scan, photo = shared_data / "scans" / "rp_dennis_posed_004_30k.obj", shared_data / "images" / "img1.png"
    if not (scan.is_file() and photo.is_file()):
        pytest.skip(f"sample scan or photo not found in {shared_data}")
    venv = cached_folder("python", "\n".join(STOCK_REQUIREMENTS), make_stock_python)
    python = venv / "bin" / "python"
    wheelhouse = cached_folder("wheelhouse", torch_requirement(), make_wheelhouse(python))
    [extension_zip] = build.build(tmp_path / "dist", platforms=("linux-x64",))

    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "LVD_"))}
    environment.update(BLENDER_USER_RESOURCES=str(tmp_path / "blender-user"), LVD_WHEELHOUSE=str(wheelhouse), OMP_NUM_THREADS="1")
    completed = subprocess.run([str(python), "-I", str(SCRIPT), str(extension_zip), str(scan), str(photo)], env=environment,
                               capture_output=True, text=True, timeout=900)  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    report = json.loads(next(line for line in reversed(completed.stdout.splitlines()) if line.startswith("{")))

    assert "ModuleNotFoundError" not in output, output[-3000:]
    assert report["install_zip"] == ["FINISHED"] and report["enabled"], report
    assert "torch" in report["missing_before"], report  # nothing but the bundled wheels before the install
    assert report["install_torch"] == ["FINISHED"] and report["missing_after"] == [], report
    assert report["fit"] == ["FINISHED"], report
    assert str(tmp_path / "blender-user") in report["torch_file"]  # the extension's own PyTorch, not another
    assert report["torch_in_blender"] is False  # Blender's process never imports PyTorch: the fits run beside it
    assert report["armatures"] == 1 and report["bones"] > 20, report
    assert report["body_vertices"] > 10_000 and report["skinned"] and report["vertex_groups"] == report["bones"], report
    assert report["photo_fit"] == ["FINISHED"] and report["photo_armatures"] == 1 and report["photo_skinned"], report
