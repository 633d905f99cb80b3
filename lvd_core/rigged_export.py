"""The rigged character of a fit as .glb and .fbx, written headless through Blender's bpy module.

bpy is optional: it is imported here only, on first use, with Blender's user folders in a temporary
directory (otherwise `import bpy` writes into ~/.config/blender). The character is built by the Blender
extension's own code (lvd_blender.character, lvd_blender.export, from the source tree beside lvd_core), so
the CLI's files are the ones the extension would export. Placement: see lvd_core.outputs (input frame, Z-up,
metres).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .body import BodyModel, load_body_model
from .export import character_description
from .outputs import zup_from_input
from .pipeline import FitResult

RIGGED_FORMATS = {"glb": "GLB", "fbx": "FBX"}


@functools.cache
def bpy_unavailable_reason() -> str | None:
    """None when bpy and the extension's sources import; else why not, in one line."""
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="lvd-blender-user-"))
    if importlib.util.find_spec("lvd_blender") is None:
        return "the Blender extension's package (lvd_blender) is not installed beside lvd_core"
    try:
        import bpy  # noqa: F401
    except (ImportError, OSError) as error:  # not installed, or its system libraries are missing
        return f"Blender's bpy module cannot be imported ({error})"
    return None


def bpy_available() -> bool:
    return bpy_unavailable_reason() is None


def export_rigged(result: FitResult, out_dir: str | Path, stem: str, *, body: BodyModel | None = None) -> dict[str, Path]:
    """Write out_dir/<stem>.glb and <stem>.fbx (armature posed at the fit, mesh skinned to it) and return
    them by extension. Raises RuntimeError when bpy cannot be used."""
    reason = bpy_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    import bpy
    from lvd_blender.character import build_character
    from lvd_blender.export import export_characters

    body = body or load_body_model(result.body_name)
    bpy.ops.wm.read_homefile(use_empty=True)
    armature, _ = build_character(
        stem,
        character_description(body, result.params),
        frame_matrix=zup_from_input(result, body) @ result.input_from_model,
        residual_mm=result.residual_mm,
    )
    out_dir = Path(out_dir)
    written = {}
    # Blender names files after the armature, shortened and cleaned; write in a scratch folder, then rename.
    with tempfile.TemporaryDirectory(prefix="lvd-export-") as scratch, blender_output_silenced():
        for extension, file_format in RIGGED_FORMATS.items():
            (path,) = export_characters([armature], scratch, file_format)
            written[extension] = Path(shutil.move(path, out_dir / f"{stem}.{extension}"))
    return written


@contextlib.contextmanager
def blender_output_silenced():
    """Blender's exporters print their progress straight to the process's stdout and stderr (from C and from
    Python logging); a command line tool's own output must stay readable. Errors still raise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in (*saved, devnull):
            os.close(descriptor)
