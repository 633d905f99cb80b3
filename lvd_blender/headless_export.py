"""The rigged character of a fit as .glb and .fbx, written headless through Blender's bpy module.

Run as `python -m lvd_blender.headless_export`, one process per character: the request (pickled, on stdin)
is lvd_core.outputs.rigged_character's dict plus the files to write, {"glb": path, "fbx": path}. A process of
its own keeps bpy (its sys.path entries, its memory, a crash) out of the fitting process and its workers.
The character is built by the extension's own code (lvd_blender.character, lvd_blender.export), so the CLI's
files are the ones the extension would export. Exit code 0: every file written; else the last stderr line
says why.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import bpy
from lvd_core.native_output import STDERR, STDOUT, silenced

from .character import build_character
from .export import export_characters

FILE_FORMATS = {"glb": "GLB", "fbx": "FBX"}


def export_rigged(name: str, character: dict, targets: dict[str, str | Path]) -> None:
    """Build the character (armature posed at the fit, mesh skinned to it) in an empty scene and write it to
    each of `targets` ({"glb" | "fbx": path})."""
    bpy.ops.wm.read_homefile(use_empty=True)
    armature, _ = build_character(
        name,
        character["description"],
        frame_matrix=character["frame_matrix"],
        residual_mm=character["residual_mm"],
        doubtful=character["doubtful"],
    )
    # Blender names files after the armature, shortened and cleaned; write in a scratch folder, then move.
    with tempfile.TemporaryDirectory(prefix="lvd-export-") as scratch:
        for extension, target in targets.items():
            (path,) = export_characters([armature], scratch, FILE_FORMATS[extension])
            shutil.move(path, target)


def main() -> int:
    request = pickle.load(sys.stdin.buffer)  # written by lvd_core.cli's rigged writer, our own parent
    try:
        with silenced(STDOUT, STDERR):  # Blender's exporters print their progress
            export_rigged(request["name"], request["character"], request["targets"])
    except Exception as error:  # noqa: BLE001 - the caller gets the reason as one line
        print(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
