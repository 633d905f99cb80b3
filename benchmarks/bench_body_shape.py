"""The body under the clothes: build, size and phenotypes of the fitted body, before and after the clothing-aware
objective and the shape prior, in the same run.

Run: .venv/bin/python benchmarks/bench_body_shape.py [--n 8]  -> benchmarks/results_body_shape.md

- "before": the plain surface objective (every pair pulls the body onto the scan, `lvd_core.clothing.surface_pairing`)
  and the old shape prior (|phenotypes - 0.5|^2); "after": the defaults (`lvd_core.clothing.clothing_pairing`,
  the model's shape prior `BodyModel.shape_prior`).
- Held-out synthetic scans (fixed validation seed) with clothes (default realism) and with a loose garment (a
  skirt or coat on every scan): vertex error, the errors of height and chest / waist / hip circumferences
  (`lvd_core.measurements`, rest pose), of the phenotypes, and the share of the fitted body's vertices outside
  the clothed scan by more than 5 mm (the true body's share for reference: holes and noise make it non-zero).
- The real scan in ../shared/data: the same share, the measurements and phenotypes; a preview PNG of each fit.
- Photos (synthetic renders with known bodies, and the sample photos): fitted age, height and weight phenotypes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core import pipeline  # noqa: E402
from lvd_core.checkpoints import resolve_weights  # noqa: E402
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.body.base import BodyModel, BodyParams  # noqa: E402
from lvd_core.clothing import outside_scan, surface_pairing  # noqa: E402
from lvd_core.fit import refine_to_surface  # noqa: E402
from lvd_core.measurements import body_measurements  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, held_out_set  # noqa: E402
from provenance import provenance, write_results  # noqa: E402

SHARED = Path(os.environ.get("LVD_SHARED_DATA", ROOT.parent / "shared" / "data"))
REAL_SCAN = "scans/rp_dennis_posed_004_30k.obj"
LOOSE = replace(ScanRealism(), loose_garment_probability=1.0)
OUTSIDE_TOLERANCE = 0.005  # metres
MEASURES = ("height_m", "chest_m", "waist_m", "hip_m")




@contextlib.contextmanager
def plain_objective(body: BodyModel):
    """The objective before: the scan pulls the body everywhere, and the shape prior is |shape - neutral|^2."""
    original = pipeline.refine_to_surface
    pipeline.refine_to_surface = functools.partial(refine_to_surface, pairing=surface_pairing)
    body.shape_prior = lambda: None  # the BodyModel default: N(0, 1) about the neutral shape
    try:
        yield
    finally:
        pipeline.refine_to_surface = original
        del body.shape_prior


def outside_share(body: BodyModel, vertices: np.ndarray, scan: np.ndarray) -> float:
    """Share of body vertices (V, 3) outside the scan points (M, 3) by more than OUTSIDE_TOLERANCE (metres), the
    hands left out: a quarter of Anny's vertices, on fingers thinner than the scans' point spacing."""
    from lvd_core.synth.surface import body_surface

    clothed = ~body_surface(body).part_mask("hand")
    return float(outside_scan(vertices, body.faces, scan, OUTSIDE_TOLERANCE)[clothed].mean())


def synthetic_rows(body: BodyModel, realism: ScanRealism, label: str, n: int) -> list[str]:
    scans = list(held_out_set("anny", n, realism=realism, sampling=BodySampling(yaw_range_deg=30)))
    truth = BodyParams.concatenate([scan.params for scan in scans])
    true_measures = body_measurements(body, truth)
    true_outside = np.mean([outside_share(body, s.vertices_gt, s.points) for s in scans])
    rows = []
    for name, objective in (("before", plain_objective(body)), ("after", contextlib.nullcontext())):
        errors, outside, fitted, seconds = [], [], [], []
        with objective:
            for scan in scans:
                start = time.perf_counter()
                result = pipeline.fit_scan(scan.points, None, body="anny", units="m", up=body.up_axis)
                seconds.append(time.perf_counter() - start)
                errors.append(np.linalg.norm(result.vertices_input - scan.vertices_gt, axis=1) * 1000)
                outside.append(outside_share(body, result.vertices_input, scan.points))
                fitted.append(result.params.to(dtype=body.dtype))
        params = BodyParams.concatenate(fitted)
        measures = body_measurements(body, params)
        measure_errors = " | ".join(
            f"{1000 * np.abs(measures[m] - true_measures[m]).mean():.0f} ({1000 * np.median(np.abs(measures[m] - true_measures[m])):.0f}; "
            f"{1000 * (measures[m] - true_measures[m]).mean():+.0f})"
            for m in MEASURES
        )  # fmt: skip
        phenotype_errors = np.abs(params.shape - truth.shape.to(params.shape)).mean(0).tolist()
        e = np.concatenate(errors)
        rows.append(
            f"| {label} | {name} | {len(scans)} | {e.mean():.0f} / {np.percentile(e, 90):.0f} ({np.median([x.mean() for x in errors]):.0f}) | {measure_errors} | "
            + " / ".join(f"{v:.2f}" for v in phenotype_errors)
            + f" | {100 * np.mean(outside):.1f}% (true body {100 * true_outside:.1f}%) | {np.mean(seconds):.1f} s |"
        )
    return rows


def real_rows(body: BodyModel, preview_folder: Path) -> list[str]:
    from lvd_core.inputs.scan import load_scan
    from lvd_core.measurements import readable_phenotypes
    from lvd_core.inputs.frame import apply_transform
    from lvd_core.outputs import zup_from_input
    from lvd_core.preview import render_preview

    path = SHARED / REAL_SCAN
    if not path.exists():
        return [f"| {REAL_SCAN} | (not found) | | | | |"]
    scan = load_scan(path, kind="body")
    rows = []
    for name, objective in (("before", plain_objective(body)), ("after", contextlib.nullcontext())):
        with objective:
            result = pipeline.fit_scan(path, body="anny")
        to_zup = zup_from_input(result, body)  # metres, Z up
        points, vertices = apply_transform(to_zup, scan.points), apply_transform(to_zup, result.vertices_input)
        readable = readable_phenotypes(body, result.params.to(dtype=body.dtype))[0]
        preview = render_preview(
            preview_folder / f"body_shape_real_{name}.png", scan_points=points, body_vertices=vertices,
            body_faces=body.faces, title=f"{REAL_SCAN} ({name})",
        )  # fmt: skip
        phenotypes = ", ".join(f"{k} {readable[k]:.2f}" for k in body.shape_names)
        measures = " / ".join(f"{100 * readable[m]:.1f}" for m in MEASURES)
        rows.append(
            f"| {name} | {100 * outside_share(body, vertices, points):.1f}% | {measures} | {phenotypes}; "
            f"{readable['age_years']:.0f} years | {result.residual_mm:.1f} | {preview.name} |"
        )
    return rows


def photo_rows(body: BodyModel, n: int) -> list[str]:
    """Synthetic renders of held-out bodies (truth known) and the sample photos: the fitted age (years), height
    and weight phenotypes and scale, before and after the shape prior (the photo fit has no scan refinement)."""
    from lvd_core.measurements import readable_phenotypes
    from lvd_core.photo import fit_photo
    from lvd_core.synth import render_photo

    scans = held_out_set("anny", n, realism=ScanRealism.clean(points=100), sampling=BodySampling(yaw_range_deg=30))
    photos = [(f"render {k}", render_photo(body, scan.params, np.random.default_rng(k))) for k, scan in enumerate(scans)]
    inputs = [(label, photo.image, photo.mask, readable_phenotypes(body, photo.params)[0]) for label, photo in photos]
    images = SHARED / "images"
    inputs += [(path.name, path, path.with_name(f"{path.stem}_mask.png"), None) for path in sorted(images.glob("img[0-9].png"))]
    rows = []
    for label, image, mask, truth in inputs:
        cells = []
        for objective in (plain_objective(body), contextlib.nullcontext()):
            with objective:
                result = fit_photo(image, mask, body="anny")
            fitted = readable_phenotypes(body, result.params.to(dtype=body.dtype))[0]
            cells.append(
                f"{fitted['age_years']:.0f} y, height {fitted['height']:.2f}, weight {fitted['weight']:.2f}, gender "
                f"{fitted['gender']:.2f}, scale {float(result.params.scale):.2f}, IoU {result.mask_iou:.3f}"
            )
        known = "-" if truth is None else (
            f"{truth['age_years']:.0f} y, height {truth['height']:.2f}, weight {truth['weight']:.2f}, gender {truth['gender']:.2f}"
        )  # fmt: skip
        rows.append(f"| {label} | {known} | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8, help="held-out scans per synthetic set")
    parser.add_argument("--photo-n", type=int, default=4, help="synthetic renders")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = load_body_model("anny")
    preview_folder = ROOT / "benchmarks" / "previews"
    preview_folder.mkdir(exist_ok=True)
    lines = [
        "# The body under the clothes",
        "",
        f"`benchmarks/bench_body_shape.py --n {args.n} --photo-n {args.photo_n}`; CPU, 1 thread, load average {os.getloadavg()[0]:.1f} when run.",
        provenance([resolve_weights("anny", None), ROOT / "weights" / "anny-body-photo" / "checkpoint.pt"]),
        "Before: the plain surface objective and |phenotypes - 0.5|^2 prior; after: the clothing-aware objective",
        "(lvd_core.clothing) and anny's shape prior (BodyModel.shape_prior). Same scans, same run.",
        "",
        "Held-out synthetic scans (fixed validation seed). Vertex error mm (mean / 90th percentile, all vertices;",
        "the median per-scan mean); error of the fitted body's height and chest, waist, hip circumferences (mm, rest",
        "pose: mean absolute (median absolute; mean signed, + too big));",
        "mean absolute phenotype error (gender / age / muscle / weight / height / proportions); share of the fitted",
        "body's vertices (hands left out) outside the clothed scan by more than 5 mm:",
        "",
        "| set | objective | scans | vertex error | height | chest | waist | hip | phenotypes | outside the scan | time per fit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *synthetic_rows(body, ScanRealism(), "clothed (default realism)", args.n),
        *synthetic_rows(body, LOOSE, "loose garment on every scan", args.n),
        "",
        f"The real scan ({REAL_SCAN}, a slim man in a suit): share of the fitted body outside the scan by more than",
        "5 mm; height / chest / waist / hip (cm); phenotypes; median scan-to-body distance (mm); preview",
        "(benchmarks/previews/):",
        "",
        "| objective | outside the scan | height / chest / waist / hip (cm) | phenotypes | scan to body (mm) | preview |",
        "|---|---|---|---|---|---|",
        *real_rows(body, preview_folder),
        "",
        "Photos: synthetic renders of held-out bodies (their truth known; a photo's size is normalised to the neutral",
        "body, so the height is the phenotype, not metres) and the sample photos (../shared/data/images), before and",
        "after the shape prior:",
        "",
        "| photo | truth | before | after |",
        "|---|---|---|---|",
        *photo_rows(body, args.photo_n),
        "",
    ]
    write_results("body_shape", lines)


if __name__ == "__main__":
    main()
