"""Write a fit's results to files: parameters (.npz, .json), the fitted mesh in the input's frame (.obj, .ply),
a preview (.png) and, when Blender's bpy is installed, the rigged character (.glb, .fbx).

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
import time
from pathlib import Path

import numpy as np

from .body import BodyModel, load_body_model
from .inputs.frame import QUARTER_TURNS
from .inputs.scan import METRES_PER_UNIT
from .pipeline import FitResult

PARAMS_FRAME_NOTE = (
    "pose (axis-angles, radians, each joint relative to its parent; the root's is global), shape, translation "
    "(metres) and scale are in the model frame (metres, the model's up axis); input_from_model (4x4) maps that "
    "frame to the input's frame and units, where <stem>_body.obj/.ply lie"
)


def input_up_axis(result: FitResult, body: BodyModel) -> str:
    """The input's up axis: where input_from_model sends the model's up axis (it only ever swaps y and z)."""
    model_up = np.eye(3)["xyz".index(body.up_axis)]
    return "xyz"[int(np.abs(result.input_from_model[:3, :3] @ model_up).argmax())]


def zup_from_input(result: FitResult, body: BodyModel) -> np.ndarray:
    """(4, 4) the input's frame -> the same place Z-up in metres (see the module's docstring)."""
    matrix = np.eye(4)
    matrix[:3, :3] = METRES_PER_UNIT.get(result.units, 1.0) * QUARTER_TURNS[(input_up_axis(result, body), "z")]
    return matrix


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:3, :3].T + matrix[:3, 3]


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
        # the network's vertices against the fitted body (lvd_core.pipeline.DOUBT_SHARE); photos: null, false
        "disagreement_mm": None if np.isnan(result.disagreement_mm) else result.disagreement_mm,
        "doubtful": result.doubtful,
        "facing_deg": result.facing_deg,
        "batch_size": result.batch_size,  # scans fitted together; the timings are then the whole batch's
        "timings": result.timings,
    }


def write_result(
    result: FitResult,
    out_dir: str | Path,
    stem: str,
    *,
    body: BodyModel | None = None,
    scan_points: np.ndarray | None = None,
    export: bool = True,
    preview: bool = True,
) -> dict[str, Path]:
    """Write every output of `result` as out_dir/<stem>* and return them by kind (npz, obj, ply and, when
    asked, preview, glb, fbx; json last). `body`: the fitted model (needed for SMPL/MANO, whose file the
    caller has); `scan_points` (N, 3) in the input's frame are drawn in the preview. The rigged .glb/.fbx are
    written when `export` and bpy is importable. Each step's seconds are added to result.timings.

    The .json is written last, so its presence means every output is complete (`lvd batch` resumes on it)."""
    import trimesh

    body = body or load_body_model(result.body_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.timings[name] = round(now - clock, 3)
        clock = now

    paths = {"npz": out_dir / f"{stem}.npz", "obj": out_dir / f"{stem}_body.obj", "ply": out_dir / f"{stem}_body.ply"}
    np.savez(
        paths["npz"],
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
    mesh.export(paths["obj"])
    mesh.export(paths["ply"])
    lap("write")
    if preview:
        paths["preview"] = write_preview(out_dir / f"{stem}_preview.png", result, body, scan_points, title=stem)
        lap("preview")
    if export:
        from . import rigged_export

        if rigged_export.bpy_available():
            paths.update(rigged_export.export_rigged(result, out_dir, stem, body=body))
            lap("rigged_export")
    paths["json"] = out_dir / f"{stem}.json"
    paths["json"].write_text(json.dumps(params_summary(result, body), indent=1))
    return paths


def write_preview(path: Path, result: FitResult, body: BodyModel, scan_points: np.ndarray | None, title: str) -> Path:
    """The preview of `result` (and the scan's points), both seen Z-up; for a photo, the photo preview."""
    from .preview import render_photo_preview, render_preview

    to_zup = zup_from_input(result, body)
    body_zup = apply_matrix(to_zup, result.vertices_input)
    label = f"{title}: {result.body_name}, {result.quality_label(short=True)}"
    crop = getattr(result, "crop", None)
    if crop is not None:
        from .photo import silhouette

        covered = silhouette(result, crop.mask.shape[0])
        return render_photo_preview(path, crop.image, crop.mask, covered, body_zup, body.faces, title=label)
    return render_preview(
        path,
        scan_points=None if scan_points is None else apply_matrix(to_zup, scan_points),
        body_vertices=body_zup,
        body_faces=body.faces,
        title=label,
    )
