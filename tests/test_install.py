"""`pip install` of the project, outside the checkout: the declared dependencies and the shipped weights are
enough for `lvd fit` (a fresh virtual environment; the packages come from pip's cache or the registry)."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pinned_versions(name: str = "requirements.txt") -> dict[str, str]:
    """A requirements file's pins, so the fresh environment gets the versions the suite runs with."""
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def declared_dependencies(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist names (its extras left out)."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    names = []
    for line in lines:
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            spec = line.split(":", 1)[1].strip()
            names.append(next(part for part in spec.replace(">", " ").replace("<", " ").replace("=", " ").split()))
    return names


@pytest.mark.slow
def test_pip_install_then_lvd_fit_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w",
                    str(tmp_path / "wheel")], check=True)  # fmt: skip
    [wheel] = (tmp_path / "wheel").glob("lvd_core-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    pins, without_dependencies = pinned_versions(), pinned_versions("requirements-nodeps.txt")
    names = declared_dependencies(wheel)
    assert "torch" in names and "anny" in names
    pinned = [f"{n}=={pins[n.lower()]}" if n.lower() in pins else n for n in names if n.lower() not in without_dependencies]
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + pinned, check=True)
    subprocess.run(pip + ["--no-deps"] + [f"{n}=={v}" for n, v in without_dependencies.items()] + [str(wheel)], check=True)
    scan = ROOT / "lvd_core" / "data" / "sample_scan.ply"
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run([str(tmp_path / "env" / "bin" / "lvd"), "fit", str(scan), "--out", str(work / "out"), "--no-export"],
                          cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "out" / "sample_scan.json").is_file() and (work / "out" / "sample_scan.npz").is_file()
    # The weights came from the installed data, not from this checkout.
    probe = "from lvd_core.resources import weights_dir; print(weights_dir())"
    found = subprocess.run([str(python), "-c", probe], cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert found.startswith(str(tmp_path / "env")), found
