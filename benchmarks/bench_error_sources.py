"""Where the body's vertex error comes from, on the held-out clothed scans: a diagnosis, not an aim.

Run: .venv/bin/python benchmarks/bench_error_sources.py [--n 16] -> benchmarks/results_error_sources.md

1. After the shipped pipeline's fit: the mean vertex error of each body part, and of each pose family.
2. Each hand: its error; what is left once the fitted hand is moved onto the true one by a translation (its
   orientation and fingers) and by the best rigid motion (its fingers alone); the wrist's and elbow's errors.
3. Oracle fits, the ceiling of a perfect hand locator: each hand's LVD vertices moved so that their centroid is
   the truth's (the hand located, not shaped), or replaced by the truth; the rest of the pipeline unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lvd_core import pipeline  # noqa: E402
from lvd_core.checkpoints import load_network, resolve_weights  # noqa: E402
from lvd_core.body import load_body_model  # noqa: E402
from lvd_core.inputs.frame import apply_transform  # noqa: E402
from lvd_core.synth import BodySampling, ScanRealism, held_out_set  # noqa: E402
from provenance import write_results  # noqa: E402

PARTS = {  # joint-name prefixes of each part (Anny)
    "head and neck": ("head", "neck", "eye"),
    "torso": ("pelvis", "spine", "clavicle"),
    "arms": ("shoulder", "upperarm", "lowerarm"),
    "hands": ("wrist", "metacarpal", "finger"),
    "legs and feet": ("upperleg", "lowerleg", "foot", "toe"),
}
HAND_JOINTS = PARTS["hands"]


def vertex_owners(body) -> np.ndarray:
    """(V,) the name of the joint that dominates each vertex."""
    return np.array(body.joint_names)[body.skinning_weights.argmax(1).cpu().numpy()]


def hand_of(owners: np.ndarray, side: str) -> np.ndarray:
    """(V,) bool: the vertices of one hand (side "R" or "L")."""
    return np.array([name.startswith(HAND_JOINTS) and name.endswith("." + side) for name in owners])


def rigidly_aligned(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """source (N, 3) moved by the rotation and translation that bring it closest to target (N, 3) (Kabsch)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - source_mean).T @ (target - target_mean))
    u[:, 2] *= np.sign(np.linalg.det(u @ vt))
    return (source - source_mean) @ u @ vt + target_mean


def distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) * 1000


def fitted_joints(body, result) -> np.ndarray:
    """(J, 3) the fitted body's joints in the input frame."""
    joints = body(result.params).joints[0].detach().double().numpy()
    return apply_transform(result.input_from_model, joints)


def hand_rows(body, owners: np.ndarray, scans: list, results: list) -> list[float]:
    """Mean over scans and both hands of: hand error, after translation, after rigid alignment, wrist, elbow."""
    rows = []
    for scan, result in zip(scans, results):
        joints = fitted_joints(body, result)
        for side in "RL":
            mask = hand_of(owners, side)
            fitted, true = result.vertices_input[mask], scan.vertices_gt[mask]
            wrist, elbow = body.joint_names.index(f"wrist.{side}"), body.joint_names.index(f"lowerarm01.{side}")
            rows.append([
                distance_mm(fitted, true).mean(),
                distance_mm(fitted - fitted.mean(0) + true.mean(0), true).mean(),
                distance_mm(rigidly_aligned(fitted, true), true).mean(),
                distance_mm(joints[wrist], scan.joints_gt[wrist]),
                distance_mm(joints[elbow], scan.joints_gt[elbow]),
            ])  # fmt: skip
    return list(np.mean(rows, 0))


def fits_with_hands_told(scans: list, owners: np.ndarray, how: str) -> list:
    """The pipeline's fits with each hand's LVD vertices corrected from the truth before the body fit: how="centroid"
    moves them so their centroid is the truth's, "exact" replaces them by the truth."""
    predict = pipeline.predict_vertices
    results = []
    for scan in scans:

        def told(*args, **kwargs):
            predictions, ids = predict(*args, **kwargs)
            truth = scan.vertices_gt[ids]
            for prediction in predictions:
                for hand in [hand_of(owners, side)[ids] for side in "RL"]:
                    if how == "exact":
                        prediction.predicted[:, hand] = truth[hand]
                    else:
                        prediction.predicted[:, hand] += truth[hand].mean(0) - prediction.predicted[:, hand].mean(1, keepdims=True)
            return predictions, ids

        with mock.patch.object(pipeline, "predict_vertices", told):
            results.append(fit(scan))
    return results


def fit(scan):
    return pipeline.fit_scan(scan.points, None, body="anny", units="m", up="z")


def family_rows(scans: list, per_scan: np.ndarray) -> list[str]:
    """Table rows 'family | scans | mean error' (most scans first), then the structured families together."""
    families = np.array([scan.info["pose_family"] for scan in scans])
    names, counts = np.unique(families, return_counts=True)
    rows = [f"| {name} | {count} | {per_scan[families == name].mean():.0f} |" for name, count in sorted(zip(names, counts), key=lambda x: -x[1])]
    structured = families != "random"
    return rows + [f"| all but random | {structured.sum()} | {per_scan[structured].mean():.0f} |"]


def summary(scans: list, results: list) -> str:
    """'mean | per-scan median | scans over 100 mm' of the vertex error after the fit."""
    per_scan = np.array([distance_mm(r.vertices_input, s.vertices_gt).mean() for s, r in zip(scans, results)])
    return f"{per_scan.mean():.1f} | {np.median(per_scan):.1f} | {(per_scan > 100).sum()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16, help="held-out clothed body scans")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = load_body_model("anny")
    owners = vertex_owners(body)
    network = load_network(resolve_weights("anny", None), torch.device("cpu"))
    network_ids = np.asarray(network.checkpoint_metadata["vertex_ids"])
    scans = list(held_out_set("anny", args.n, realism=ScanRealism(), sampling=BodySampling(yaw_range_deg=30)))
    results = [fit(scan) for scan in scans]

    errors = np.stack([distance_mm(r.vertices_input, s.vertices_gt) for s, r in zip(scans, results)])  # (n, V)
    part_of = {part: np.array([name.startswith(prefixes) for name in owners]) for part, prefixes in PARTS.items()}
    lines = [
        "# Where the body's error comes from",
        "",
        f"`benchmarks/bench_error_sources.py --n {args.n}`: {args.n} held-out clothed scans (the validation seed of "
        f"`bench_quality.py`), the shipped body network; CPU, 1 thread, load average {os.getloadavg()[0]:.1f} when run.",
        "",
        "After the fit, mean vertex error of each part (mm):",
        "",
        "| part | share of the vertices | in the network's subset | mean error |",
        "|---|---|---|---|",
        *[f"| {part} | {mask.mean():.0%} | {mask[network_ids].sum()} | {errors[:, mask].mean():.0f} |" for part, mask in part_of.items()],
        f"| all | 100% | {len(network_ids)} | {errors.mean():.0f} |",
        "",
        "After the fit, mean vertex error by pose family (mm; `random`: every joint's angles drawn uniformly within",
        "its limits, the contorted poses no other family holds):",
        "",
        "| pose family | scans | mean error |",
        "|---|---|---|",
        *family_rows(scans, errors.mean(1)),
        "",
        "Hands (mean of both hands over the scans, mm):",
        "",
        "| hand vertices | ... moved by the translation to the true hand | ... by the best rigid motion | wrist joint | elbow joint |",
        "|---|---|---|---|---|",
        "| " + " | ".join(f"{x:.0f}" for x in hand_rows(body, owners, scans, results)) + " |",
        "",
        "Oracle fits (vertex error after the fit, mm):",
        "",
        "| LVD vertices of the hands | mean | per-scan median | scans over 100 mm |",
        "|---|---|---|---|",
        f"| as predicted (the shipped pipeline) | {summary(scans, results)} |",
        f"| moved to the true hand centroid | {summary(scans, fits_with_hands_told(scans, owners, 'centroid'))} |",
        f"| replaced by the truth | {summary(scans, fits_with_hands_told(scans, owners, 'exact'))} |",
        "",
    ]
    write_results("error_sources", lines)


if __name__ == "__main__":
    main()
