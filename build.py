"""Build the Blender extension zip: lvd_blender's files at the top of the extension, with lvd_core and the
weights vendored inside it (`vendor/lvd_core`, `vendor/weights`: extensions may not load top-level modules
from their folder or add to sys.path), packed and validated by Blender's own extension builder.

    python build.py [--output-dir dist] [--split-platforms]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
# Training leftovers beside the shipped checkpoints: users need the checkpoint and its manifest only.
IGNORED_WEIGHTS = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "train_state.pt", "log.jsonl", "train.log")


def blender_ext_script() -> Path:
    """Blender's extension CLI, shipped inside the bpy module (no Blender binary needed)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("build.py needs the bpy module (pip install bpy) for Blender's extension builder")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        sys.exit("Blender's extension builder (bl_pkg/cli/blender_ext.py) was not found inside bpy")
    return found[-1]


def stage(destination: Path, *, link: bool = False) -> Path:
    """Lay out the extension folder at `destination`. `link` symlinks instead of copying (for tests, which
    register the folder as an extension repository without packing it)."""
    destination.mkdir(parents=True, exist_ok=True)
    vendor = destination / "vendor"
    vendor.mkdir(exist_ok=True)
    (vendor / "__init__.py").write_text('"""Packages the extension carries with it (lvd_core and its weights)."""\n')
    sources = [(path, destination / path.name) for path in (ROOT / "lvd_blender").iterdir() if path.name != "__pycache__"]
    sources += [
        (ROOT / "blender_manifest.toml", destination / "blender_manifest.toml"),
        (ROOT / "lvd_core", vendor / "lvd_core"),
        (ROOT / "weights", vendor / "weights"),  # lvd_core finds its data next to itself
    ]
    for source, target in sources:
        if link:
            target.symlink_to(source)
        elif source.is_dir():
            shutil.copytree(source, target, ignore=IGNORED_WEIGHTS if source.name == "weights" else IGNORED)
        else:
            shutil.copy2(source, target)
    return destination


def build(output_dir: Path, *, split_platforms: bool = False) -> list[Path]:
    """Stage, pack and validate; returns the zip files written."""
    script = blender_ext_script()
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.glob("*.zip"))
    with tempfile.TemporaryDirectory(prefix="lvd-extension-") as scratch:
        source = stage(Path(scratch) / "lvd_fit")
        command = [sys.executable, str(script), "build", "--source-dir", str(source), "--output-dir", str(output_dir)]
        subprocess.run(command + (["--split-platforms"] if split_platforms else []), check=True)
    zips = sorted(set(output_dir.glob("*.zip")) - before) or sorted(output_dir.glob("lvd_fit-*.zip"))
    for path in zips:
        subprocess.run([sys.executable, str(script), "validate", str(path)], check=True)
    return zips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--split-platforms", action="store_true", help="one zip per platform of the manifest")
    args = parser.parse_args()
    for path in build(args.output_dir, split_platforms=args.split_platforms):
        print(path)


if __name__ == "__main__":
    main()
