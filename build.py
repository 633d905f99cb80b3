"""Build the Blender extension zips: lvd_blender's files at the top of the extension, with lvd_core and the
weights vendored inside it (`vendor/lvd_core`, `vendor/weights`: extensions may not load top-level modules
from their folder or add to sys.path), and the registry's wheels of requirements-extension.txt for each
platform (`wheels/`), packed one zip per platform and validated by Blender's own extension builder.

    python build.py [--output-dir dist] [--platform linux-x64 ...] [--no-wheels]

`--no-wheels` builds one zip without wheels, for a Blender whose Python already has the dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
# Training leftovers beside the shipped checkpoints: users need the checkpoint and its manifest only.
IGNORED_WEIGHTS = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "train_state.pt", "log.jsonl", "train.log")
# lvd_core's command line, training and demo-data modules: a fit in Blender never imports them.
IGNORED_CORE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".*", "cli.py", "scale_out.py", "train.py", "train_image.py", "preview.py", "outputs.py",
    "demo.py", "make_validation.py", "data",
)  # fmt: skip

REQUIREMENTS = ROOT / "requirements-extension.txt"
WHEEL_CACHE = ROOT / ".cache" / "wheels"
PYTHON_VERSION = "3.11"  # Blender 4.2 to 5.0 (5.1 moved to 3.13, which mediapipe 0.10.21 has no wheels for)
# pip's --platform tags per Blender platform, newest first: pip does not widen manylinux_2_x tags by itself, and
# newer wheels carry newer tags. Blender 4.2+ needs glibc 2.28 on Linux; pip widens macOS tags down to 11.0, but
# pykdtree 1.4.3 publishes macOS 14+ wheels only, so the macOS zip needs macOS 14. No macos-x64: PyTorch stopped publishing Intel macOS wheels after 2.2, so the extension could never fit there.
PLATFORM_TAGS = {
    "linux-x64": [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64"],
}
PLATFORMS = tuple(PLATFORM_TAGS)
# Each platform's environment markers (PEP 508), to read which of a wheel's dependencies apply there.
PLATFORM_MARKERS = {
    "linux-x64": {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64"},
    "windows-x64": {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt", "platform_machine": "AMD64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix", "platform_machine": "arm64"},
}
# Dependencies the bundled wheels declare that the zips do not carry, and why.
NOT_BUNDLED = {
    "torch": "Install Dependencies installs it (lvd_blender.installer)",
    "numpy": "Blender ships it (1.26.4 in Blender 4.2 to 5.0)",
    "requests": "Blender ships it",
    "warp-lang": "anny's GPU skinning, which lvd_core does not use (it skins the model itself)",
    # mediapipe's legacy solutions (lvd_core's person detection) never import these
    "jax": "", "jaxlib": "", "sentencepiece": "", "sounddevice": "", "opencv-contrib-python": "",
}  # fmt: skip


def blender_ext_script() -> Path:
    """Blender's extension CLI, shipped inside the bpy module (no Blender binary needed)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("build.py needs the bpy module (pip install bpy) for Blender's extension builder")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        sys.exit("Blender's extension builder (bl_pkg/cli/blender_ext.py) was not found inside bpy")
    return found[-1]


def requirements() -> list[str]:
    """The pinned wheels of requirements-extension.txt ("name==version" lines)."""
    lines = (line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def project_name(name: str) -> str:
    """A project's normalised name, as pip compares them ("Opencv_Python.Headless" -> "opencv-python-headless")."""
    return re.sub(r"[-_.]+", "-", name).lower()


def required_projects() -> set[str]:
    return {project_name(line.split("==")[0]) for line in requirements()}


def wheel_project(wheel: Path) -> str:
    """The project a wheel file belongs to ("opencv_python_headless-4.10...whl" -> "opencv-python-headless")."""
    return project_name(wheel.name.split("-")[0])


def download_wheels(platform: str) -> list[Path]:
    """The registry's wheels of requirements-extension.txt for `platform` (cp311), downloaded once into a cache
    folder keyed by the requirements."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + repr(PLATFORM_TAGS[platform]).encode()).hexdigest()[:12]
    folder = WHEEL_CACHE / f"{platform}-{key}"
    complete = folder / "complete"
    if not complete.exists():
        shutil.rmtree(folder, ignore_errors=True)
        tags = [option for tag in PLATFORM_TAGS[platform] for option in ("--platform", tag)]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                   "--python-version", PYTHON_VERSION, "--implementation", "cp", *tags,
                   "--dest", str(folder), "--requirement", str(REQUIREMENTS)]  # fmt: skip
        if subprocess.run(command).returncode != 0:
            sys.exit(f"pip could not download the {platform} wheels of {REQUIREMENTS.name} (see pip's message above)")
        complete.touch()
    wheels = sorted(folder.glob("*.whl"))
    wanted = required_projects()
    if {wheel_project(wheel) for wheel in wheels} != wanted or len(wheels) != len(wanted):
        sys.exit(f"{folder} does not hold exactly one wheel per line of {REQUIREMENTS.name}: delete it and build again")
    unmet = unmet_dependencies(platform, wheels)
    if unmet:
        sys.exit(f"the {platform} wheels need what {REQUIREMENTS.name} does not list: {'; '.join(unmet)}")
    return wheels


def unmet_dependencies(platform: str, wheels: list[Path]) -> list[str]:
    """The dependencies of `wheels` that apply on `platform` (Python PYTHON_VERSION) and that neither another of
    `wheels` meets nor NOT_BUNDLED names, as "project: requirement" (empty: the wheels install whole)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment = {**default_environment(), **PLATFORM_MARKERS[platform], "python_version": PYTHON_VERSION,
                   "python_full_version": f"{PYTHON_VERSION}.0", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "extra": ""}  # fmt: skip
    metadata = {wheel: wheel_metadata(wheel) for wheel in wheels}
    versions = {project_name(data["Name"]): data["Version"] for data in metadata.values()}
    unmet = []
    for wheel, data in metadata.items():
        for line in data.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            name = project_name(requirement.name)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if name in NOT_BUNDLED:
                continue
            if name not in versions or not requirement.specifier.contains(versions[name], prereleases=True):
                unmet.append(f"{wheel_project(wheel)}: {line}")
    return unmet


def wheel_metadata(wheel: Path):
    """The wheel's METADATA (an email.message.Message: Name, Version, Requires-Dist ...)."""
    import email.parser
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        [name] = [name for name in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", name)]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def manifest_with_wheels(manifest: str, platforms: list[str], wheels: list[str]) -> str:
    """The manifest text with `platforms` and `wheels` set (top-level keys: before the first table)."""
    listed = lambda values: "[\n" + "".join(f'  "{value}",\n' for value in values) + "]"  # noqa: E731
    keys = f"platforms = {listed(platforms)}\nwheels = {listed(wheels)}\n\n"
    table = re.search(r"^\[", manifest, flags=re.MULTILINE)
    at = table.start() if table else len(manifest)
    return manifest[:at] + keys + manifest[at:]


def vendored_imports(source: str) -> str:
    """An extension module's source with its lvd_core imports (`from lvd_core... import`, the only form the
    extension uses) pointed at the copy it carries, `.vendor.lvd_core`. Raises ValueError on `import lvd_core`."""
    if re.search(r"^\s*import lvd_core", source, flags=re.MULTILINE):
        raise ValueError("lvd_blender imports lvd_core as `import lvd_core...`: write `from lvd_core... import ...`")
    return re.sub(r"^(\s*)from lvd_core\b", r"\1from .vendor.lvd_core", source, flags=re.MULTILINE)


def stage(destination: Path, *, link: bool = False, platforms: tuple[str, ...] = ()) -> Path:
    """Lay out the extension folder at `destination`, with the wheels of `platforms` in `wheels/`. `link`
    symlinks instead of copying (for tests, which register the folder as an extension repository without
    packing it)."""
    destination.mkdir(parents=True, exist_ok=True)
    vendor = destination / "vendor"
    vendor.mkdir(exist_ok=True)
    (vendor / "__init__.py").write_text('"""Packages the extension carries with it (lvd_core and its weights)."""\n')
    extension_modules = sorted((ROOT / "lvd_blender").glob("*.py"))
    for module in extension_modules:  # copied even when linking: they read the vendored lvd_core
        (destination / module.name).write_text(vendored_imports(module.read_text()))
    sources = [(path, destination / path.name) for path in (ROOT / "lvd_blender").iterdir()
               if path.name != "__pycache__" and path not in extension_modules]  # fmt: skip
    sources += [
        (ROOT / "lvd_core", vendor / "lvd_core"),
        (ROOT / "weights", vendor / "weights"),  # lvd_core finds its data next to itself
    ]
    for source, target in sources:
        if link:
            target.symlink_to(source)
        elif source.is_dir():
            ignored = {"weights": IGNORED_WEIGHTS, "lvd_core": IGNORED_CORE}.get(source.name, IGNORED)
            shutil.copytree(source, target, ignore=ignored)
        else:
            shutil.copy2(source, target)
    manifest = destination / "blender_manifest.toml"
    if not platforms:
        if link:
            manifest.symlink_to(ROOT / "blender_manifest.toml")
        else:
            shutil.copy2(ROOT / "blender_manifest.toml", manifest)
        return destination
    wheels = {wheel.name: wheel for platform in platforms for wheel in download_wheels(platform)}  # pure wheels once
    (destination / "wheels").mkdir(exist_ok=True)
    for name, wheel in wheels.items():
        shutil.copy2(wheel, destination / "wheels" / name)
    listed = [f"./wheels/{name}" for name in sorted(wheels)]
    manifest.write_text(manifest_with_wheels((ROOT / "blender_manifest.toml").read_text(), list(platforms), listed))
    return destination


def build(output_dir: Path, *, platforms: tuple[str, ...] = PLATFORMS) -> list[Path]:
    """Stage, pack and validate: one zip per platform with its wheels, or one zip without wheels when
    `platforms` is empty. Returns the zip files written."""
    unknown = set(platforms) - set(PLATFORMS)
    if unknown:
        sys.exit(f"unknown platform {', '.join(sorted(unknown))}: choose among {', '.join(PLATFORMS)}")
    script = blender_ext_script()
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text())
    stem = f"{manifest['id']}-{manifest['version']}"  # Blender's builder names the zips so
    zips = [output_dir / f"{stem}-{platform.replace('-', '_')}.zip" for platform in platforms] or [output_dir / f"{stem}.zip"]
    with tempfile.TemporaryDirectory(prefix="lvd-extension-") as scratch:
        source = stage(Path(scratch) / "lvd_fit", platforms=tuple(platforms))
        command = [sys.executable, str(script), "build", "--source-dir", str(source), "--output-dir", str(output_dir)]
        subprocess.run(command + (["--split-platforms"] if platforms else []), check=True)
    for path in zips:
        subprocess.run([sys.executable, str(script), "validate", str(path)], check=True)
    return zips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--platform", action="append", choices=PLATFORMS, help="build only this platform's zip (repeatable)")
    parser.add_argument("--no-wheels", action="store_true", help="one zip without wheels (the Python has the dependencies)")
    args = parser.parse_args()
    platforms = () if args.no_wheels else tuple(args.platform or PLATFORMS)
    for path in build(args.output_dir, platforms=platforms):
        print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
