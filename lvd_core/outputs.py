"""Write a fit's results to files: parameters (.npz, .json), the fitted mesh in the input's frame (.obj, .ply),
a preview (.png) and, through a writer the caller gives (the CLI's runs Blender), the rigged character (.glb, .fbx).
Every file is written whole or not at all (`write_result`).

Frames. The .npz/.json parameters are in the model frame (metres, the model's up axis); `input_from_model`
maps them to the input's frame and units, which is where the .obj/.ply mesh is (it overlays the scan file
as is). The rigged files and the preview use the input's frame seen Z-up in metres (`zup_from_input`): the
scan's up axis turned to +Z (a quarter turn about X, like Blender's importers with a Y-up file) and its units
converted to metres (Blender's and glTF's unit). glTF/FBX exporters then write that frame Y-up, so a rigged
file lines up with its scan whenever the scan is imported with its units honoured. Unitless scans count as
metres (what Blender's importers assume).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .body import BodyModel, load_body_model
from .inputs.frame import QUARTER_TURNS, apply_transform
from .inputs.scan import METRES_PER_UNIT
from .measurements import fit_description
from .results import FitResult

PARAMS_FRAME_NOTE = (
    "pose (axis-angles, radians, each joint relative to its parent; the root's is global), shape, translation "
    "(metres) and scale are in the model frame (metres, the model's up axis); input_from_model (4x4) maps that "
    "frame to the input's frame and units, where <stem>_body.obj/.ply lie"
)


def input_up_axis(result: FitResult, body: BodyModel) -> str:
    """The input's up axis: where input_from_model sends the model's up axis once the person stands (it then only
    ever swaps y and z)."""
    return person_up(result, body, standing=True)[1]


def person_up(result: FitResult, body: BodyModel, standing: bool = False) -> str:
    """The input's axis the fitted person stands along, "+y", "-x", ... (standing: on the scan turned upright)."""
    model_up = np.eye(3)["xyz".index(body.up_axis)]
    rotation = result.input_from_model[:3, :3]
    direction = (result.upright_turn @ rotation if standing else rotation) @ model_up
    k = int(np.abs(direction).argmax())
    return ("+" if direction[k] > 0 else "-") + "xyz"[k]


def zup_from_input(result: FitResult, body: BodyModel) -> np.ndarray:
    """(4, 4) the input's frame -> the same place Z-up in metres (see the module's docstring)."""
    matrix = np.eye(4)
    matrix[:3, :3] = METRES_PER_UNIT.get(result.units, 1.0) * QUARTER_TURNS[(input_up_axis(result, body), "z")]
    return matrix


def params_summary(result: FitResult, body: BodyModel) -> dict:
    """The fit as plain JSON: named pose and shape values, frames, quality and timings."""
    arrays = result.params.to_numpy()
    pose = np.concatenate([arrays["global_orient"][:, None], arrays["joint_pose"]], axis=1)[0]
    return {
        "body_model": result.body_name,
        "units": result.units,
        "frames": PARAMS_FRAME_NOTE,
        "global_orient": {body.joint_names[0]: pose[0].tolist()},
        "joint_pose": {name: value.tolist() for name, value in zip(body.joint_names[1:], pose[1:])},
        "shape": dict(zip(body.shape_names, arrays["shape"][0].tolist())),
        "translation": arrays["translation"][0].tolist(),
        "scale": float(arrays["scale"][0, 0]),
        "input_from_model": result.input_from_model.tolist(),
        "residual_mm": result.residual_mm,
        # scans: the network's vertices against the fitted body (lvd_core.pipeline.DOUBT_SHARE); photos: null, and
        # doubtful from the silhouette IoU (lvd_core.photo.DOUBT_IOU)
        "disagreement_mm": None if np.isnan(result.disagreement_mm) else result.disagreement_mm,
        "doubtful": result.doubtful,
        "facing_deg": result.facing_deg,
        "person_up": person_up(result, body),  # the input's axis the person stands along ("-x": lying, head at -x)
        "batch_size": result.batch_size,  # scans fitted together; the timings are then the whole batch's
        "timings": result.timings,
    }


# Every file of one fit, by kind: <stem> + suffix. The .json is the record that the others are complete.
OUTPUT_SUFFIXES = {"npz": ".npz", "obj": "_body.obj", "ply": "_body.ply", "preview": "_preview.png", "glb": ".glb", "fbx": ".fbx",
                   "json": ".json"}  # fmt: skip
RIGGED_KINDS = ("glb", "fbx")
PARTIAL_MARK = ".lvd-partial-"


class RiggedExportError(RuntimeError):
    """The rigged .glb/.fbx could not be written (e.g. Blender's bpy missing); the message says why in one line."""


@dataclass
class WrittenOutputs:
    """The files of one fit by kind (json last) and what was left out and why (e.g. the rigged export)."""

    paths: dict[str, Path]
    warnings: list[str] = field(default_factory=list)
    description: dict = field(default_factory=dict)  # the fitted body in words (lvd_core.measurements.fit_description)


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    return {kind: Path(out_dir) / f"{stem}{suffix}" for kind, suffix in OUTPUT_SUFFIXES.items()}


def partial_path(path: Path) -> Path:
    """The name `path` is written under until every output is complete (same folder, same extension: writers
    pick their format from it); hidden, and marked so a later run can clear what a killed one left."""
    return path.with_name(f".{path.stem}{PARTIAL_MARK}{os.getpid()}{path.suffix}")


def rigged_character(result: FitResult, body: BodyModel) -> dict:
    """What a rigged writer needs (plain numbers, no torch): lvd_core.character's character description, the map
    from the model's fitted frame to the input frame seen Z-up in metres, and the fit's quality."""
    from .character import character_description

    return {
        "description": character_description(body, result.params),
        "frame_matrix": zup_from_input(result, body) @ result.input_from_model,
        "residual_mm": result.residual_mm,
        "doubtful": result.doubtful,
    }


def write_result(
    result: FitResult,
    out_dir: str | Path,
    stem: str,
    *,
    body: BodyModel | None = None,
    scan_points: np.ndarray | None = None,
    rigged_writer: Callable[[str, dict, dict[str, Path]], Callable[[], None] | None] | None = None,
    preview: bool = True,
    record: dict | None = None,
) -> WrittenOutputs:
    """Write every output of `result` as out_dir/<stem>* (OUTPUT_SUFFIXES): npz, obj, ply and, when asked, the
    preview and the rigged glb/fbx; the json last. `body`: the fitted model (needed for SMPL/MANO, whose file
    the caller has); `scan_points` (N, 3) in the input's frame are drawn in the preview; `rigged_writer(stem,
    rigged_character(...), {"glb": path, "fbx": path})` writes the rigged files, or starts them and returns
    the function that waits for them (RiggedExportError from either: they are left out with a warning);
    `record` is added to the json (e.g. the input's fingerprint). Each step's seconds are added to
    result.timings.

    Whole or nothing: every file is written under a partial name, then renamed into place, the json last
    (its presence means the rest is complete). Earlier outputs of the same stem are replaced all together;
    if writing fails, they are left as they were."""
    body = body or load_body_model(result.body_name)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    final = output_paths(out_dir, stem)
    staged: dict[str, Path] = {}
    written = WrittenOutputs(paths={})
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.timings[name] = round(now - clock, 3)
        clock = now

    def stage(kind: str) -> Path:
        staged[kind] = partial_path(final[kind])
        return staged[kind]

    def rigged(step: Callable[[], object]):
        """step()'s value; None, with a warning and no rigged files, when they cannot be written."""
        try:
            return step()
        except RiggedExportError as error:
            written.warnings.append(f"no rigged .glb/.fbx: {error}")
            for kind in RIGGED_KINDS:
                staged.pop(kind).unlink(missing_ok=True)
            return None

    finish = None
    try:
        write_mesh_files(result, body, stage)
        lap("write")
        if rigged_writer is not None:  # asked first: a writer in a process of its own works during the preview
            targets = {kind: stage(kind) for kind in RIGGED_KINDS}
            finish = rigged(lambda: rigged_writer(stem, rigged_character(result, body), targets) or (lambda: None))
        if preview:
            write_preview(stage("preview"), result, body, scan_points, title=stem)
            lap("preview")
        if finish is not None:
            waiting, finish = finish, None
            rigged(waiting)
            lap("rigged_export")
        written.description = fit_description(body, result.params, real_size=result.units != "unitless")
        summary = params_summary(result, body) | {"body": written.description} | {"outputs": {kind: final[kind].name for kind in [*staged, "json"]}} | (record or {})
        stage("json").write_text(json.dumps(summary, indent=1))
        commit(staged, final)
    finally:
        if finish is not None:  # the preview failed: the writer ends before its files are removed
            rigged(finish)
        for path in staged.values():
            path.unlink(missing_ok=True)  # left only when writing failed: renamed away otherwise
    written.paths = {kind: final[kind] for kind in staged}
    return written


def write_mesh_files(result: FitResult, body: BodyModel, stage: Callable[[str], Path]) -> None:
    """The parameters (.npz) and the fitted mesh in the input's frame (.obj, .ply), each to stage(kind)."""
    import trimesh

    np.savez(
        stage("npz"),
        **result.params.to_numpy(),
        input_from_model=result.input_from_model,
        vertices_input=result.vertices_input,
        lvd_vertices_input=result.lvd_vertices_input,
        lvd_vertex_ids=result.lvd_vertex_ids,
        faces=body.faces,
        residual_mm=result.residual_mm,
        body_model=result.body_name,
        units=result.units,
        joint_names=np.array(body.joint_names),
        shape_names=np.array(body.shape_names),
    )
    mesh = trimesh.Trimesh(result.vertices_input, body.faces, process=False)
    mesh.export(stage("obj"))
    mesh.export(stage("ply"))


def commit(staged: dict[str, Path], final: dict[str, Path]) -> None:
    """Rename the staged files into place: the old json goes first (the stem counts as unfinished until the
    new one lands), then every other file, outputs of kinds this fit has not (e.g. an old .glb) removed, and
    the json last."""
    final["json"].unlink(missing_ok=True)
    for kind, path in final.items():
        if kind == "json":
            continue
        if kind in staged:
            os.replace(staged[kind], path)
        else:
            path.unlink(missing_ok=True)
    os.replace(staged["json"], final["json"])


def remove_partial_files(out_dir: str | Path) -> int:
    """Remove what writers killed mid-way left in out_dir (only safe while no other run writes there)."""
    partial = [path for path in Path(out_dir).glob(f".*{PARTIAL_MARK}*") if path.is_file()]
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def write_preview(path: Path, result: FitResult, body: BodyModel, scan_points: np.ndarray | None, title: str) -> Path:
    """The preview of `result` (and the scan's points), both seen Z-up; for a photo, the photo preview."""
    from .preview import render_photo_preview, render_preview

    to_zup = zup_from_input(result, body)
    body_zup = apply_transform(to_zup, result.vertices_input)
    label = f"{title}: {result.body_name}, {result.quality_label(short=True)}"
    crop = getattr(result, "crop", None)
    if crop is not None:
        from .photo import silhouette

        covered = silhouette(result, crop.mask.shape[0])
        return render_photo_preview(path, crop.image, crop.mask, covered, body_zup, body.faces, title=label)
    return render_preview(
        path,
        scan_points=None if scan_points is None else apply_transform(to_zup, scan_points),
        body_vertices=body_zup,
        body_faces=body.faces,
        title=label,
    )
