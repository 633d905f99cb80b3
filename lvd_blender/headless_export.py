"""The rigged character of a fit as .glb and .fbx, written headless through Blender's bpy module.

Run as `python -m lvd_blender.headless_export`: a process of its own keeps bpy (its sys.path entries, its
memory, a crash) out of the fitting process and its workers. It imports bpy at once (so that the import
overlaps the caller's fit), then serves requests until its stdin closes: each a pickle of
lvd_core.outputs.rigged_character's dict plus the files to write, {"glb": path, "fbx": path}, answered by one
JSON line on stdout, {"ok": true} once every file is written or {"error": "why, in one line"}. Nothing else
is written to stdout (what Blender prints goes to stderr). The character is built by the extension's own
code (lvd_blender.character, lvd_blender.export), so the CLI's files are the ones the extension would export.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

from lvd_core.native_output import STDERR, STDOUT, silenced

FILE_FORMATS = {"glb": "GLB", "fbx": "FBX"}


def export_rigged(name: str, character: dict, targets: dict[str, str | Path]) -> None:
    """Build the character (armature posed at the fit, mesh skinned to it) in an empty scene and write it to
    each of `targets` ({"glb" | "fbx": path})."""
    import bpy

    from .character import build_character
    from .export import export_characters

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


def serve(requests, replies) -> None:
    """Answer each pickled request read from `requests` (a binary stream) with one JSON line on `replies`."""
    while True:
        try:
            request = pickle.load(requests)  # written by lvd_core.cli's rigged exporter, our own parent
        except EOFError:
            return
        try:
            with silenced(STDOUT, STDERR):  # Blender's exporters print their progress
                export_rigged(request["name"], request["character"], request["targets"])
            reply = {"ok": True}
        except Exception as error:  # noqa: BLE001 - the caller gets the reason as one line
            lines = str(error).strip().splitlines()
            reply = {"error": f"{type(error).__name__}: {lines[0] if lines else ''}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main() -> int:
    replies = os.fdopen(os.dup(STDOUT), "w")
    os.dup2(STDERR, STDOUT)  # the caller's pipe carries the replies alone
    with tempfile.TemporaryDirectory(prefix="lvd-blender-user-", ignore_cleanup_errors=True) as blender_user:
        os.environ["BLENDER_USER_RESOURCES"] = blender_user  # else bpy writes to ~/.config/blender
        from . import character, export  # noqa: F401 - bpy's import (~1 s), while the caller still fits

        serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
