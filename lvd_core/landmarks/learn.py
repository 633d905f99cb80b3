"""Learn where the person detector puts each landmark, as a blend of a few of the body model's vertices.

MediaPipe's points differ from the body model's own keypoints (on Anny: its knees, ankles and heels 2-3 cm higher,
its ears 3-4 cm nearer the midline): fitted to them through the model's regressor, a body is pulled off by
centimetres.
So each landmark is learned from synthetic bodies: render a clothed scan of a random body (`lvd_core.synth`),
detect and triangulate as for a user's scan (`find_landmarks`), and solve (least squares) for vertex weights
summing to 1 that map the true body to the detected point: the model's keypoint vertices plus a few spread
around it, whose signed weights carry the offset in the body's local frame (an affine blend follows the body
wherever it stands), near the model's own regressor where the data say little.

    python -m lvd_core.landmarks.learn --bodies 420 --minutes 22 [--cache detections.npz]

writes weights/anny/anny-landmarks.npz and its manifest (anny-landmarks.json: how it was made, held-out error).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from .detect import INDEX, find_landmarks
from .regressor import LANDMARK_MIN_CONFIDENCE, LEARNED_NAMES, MODEL_NAMES, landmark_file

SEED = 7331  # neither the networks' training seed (0) nor the held-out sets' (VALIDATION_SEED)
TEST_SHARE = 0.2  # the last bodies: kept out of the fit and scored (the manifest's figures)
VALIDATION_SHARE = 0.2  # the bodies before them: pick each landmark's regularisation
CORE_VERTICES = 24  # each landmark's strongest vertices in the model's regressor ...
FRAME_VERTICES = 8  # ... and vertices spread around it (within FRAME_RADIUS), which span its offsets
FRAME_RADIUS = 0.08  # metres, on the neutral body
# Pull (per body) towards the model's own regressor: the candidates, the smallest validation miss wins.
PRIORS = (0.1, 0.03, 0.01, 0.003, 0.001)
OUTLIER_SHARE = 3.0  # a body whose miss is over this many times the median miss is dropped, then refitted


def detections(body_name: str, count: int, minutes: float, seed: int = SEED) -> dict[str, np.ndarray]:
    """Up to `count` clothed synthetic bodies of every pose family, any facing, with the detector's landmarks:
    index (S,) each body's in the dataset, vertices (S, V, 3) float32 the unclothed body, points (S, 33, 3) and
    confidence (S, 33) in the same frame (metres, Z up), family (S,). Bodies where no person is found are left
    out; stops after `minutes`."""
    from ..body import load_body_model
    from ..canonical import scan_frame
    from ..inputs.scan import load_scan
    from ..synth import BodySampling, SyntheticScans
    from ..synth.poses import known_families

    families = known_families(load_body_model(body_name))
    dataset = SyntheticScans(body_name, seed, sampling=BodySampling(yaw_range_deg=180, families=families))
    found: dict[str, list] = {"index": [], "vertices": [], "points": [], "confidence": [], "family": []}
    start = time.monotonic()
    for i in range(count):
        if time.monotonic() - start > 60 * minutes:
            break
        scan = dataset[i]
        loaded = load_scan((scan.points, scan.faces), units="m", up="z")
        frame = scan_frame(loaded)
        person = find_landmarks(frame.to_canonical(loaded.points.astype(np.float64)))
        if not person.found:
            continue
        found["index"].append(i)
        found["vertices"].append(scan.vertices_gt)
        found["points"].append(frame.to_input(person.points))
        found["confidence"].append(person.confidence)
        found["family"].append(scan.info["pose_family"])
    return {key: np.asarray(value) for key, value in found.items()}


def fit_landmark(candidates: np.ndarray, targets: np.ndarray, confidence: np.ndarray, prior: np.ndarray,
                 strength: float) -> np.ndarray:  # fmt: skip
    """Weights (C,) summing to 1 with candidates (S, C, 3) @ weights ~ targets (S, 3), each body weighed by its
    confidence (S,), pulled towards prior (C,) (`strength` per body); bodies missing by over OUTLIER_SHARE times
    the median are dropped and the fit repeated."""
    use = confidence > 0
    for _ in range(2):
        root = np.sqrt(confidence[use])
        system = (root[:, None, None] * candidates[use]).transpose(0, 2, 1).reshape(-1, len(prior))  # (3S, C)
        pull = np.sqrt(strength * use.sum())
        matrix = np.vstack([system, pull * np.eye(len(prior)), 1e3 * np.ones((1, len(prior)))])
        goal = np.concatenate([(root[:, None] * targets[use]).ravel(), pull * prior, [1e3]])  # the last row: sum 1
        weights = np.linalg.lstsq(matrix, goal, rcond=None)[0]
        misses = np.linalg.norm(np.einsum("sci,c->si", candidates, weights) - targets, axis=1)
        keep = use & (misses <= OUTLIER_SHARE * np.median(misses[use]))
        if (keep == use).all():
            break
        use = keep
    return weights / weights.sum()


def support(row: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """A landmark's vertices: the CORE_VERTICES strongest of the model's regressor row (V,) and FRAME_VERTICES
    spread over the neutral body's vertices rest (V, 3) within FRAME_RADIUS of its point (farthest first)."""
    core = np.argsort(row)[::-1][:CORE_VERTICES]
    near = np.flatnonzero(np.linalg.norm(rest - row @ rest, axis=1) <= FRAME_RADIUS)
    spread, distance = [near[0]], np.linalg.norm(rest[near] - rest[near[0]], axis=1)
    for _ in range(FRAME_VERTICES - 1):
        spread.append(near[int(distance.argmax())])
        distance = np.minimum(distance, np.linalg.norm(rest[near] - rest[spread[-1]], axis=1))
    return np.union1d(core, spread)


def miss_mm(candidates: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return 1000 * np.linalg.norm(np.einsum("sci,c->si", candidates, weights) - targets, axis=1)


def learn(data: dict[str, np.ndarray], model) -> tuple[dict[str, np.ndarray], dict]:
    """The learned regressor (arrays for the npz: names, vertex (L, K), weight (L, K)) and its scores: per
    landmark the median / 90th percentile miss (mm) of the learned and of the model's regressor on the test
    bodies whose detection a fit uses (confidence >= LANDMARK_MIN_CONFIDENCE)."""
    coco, coco_names = model.landmark_regressor()
    coco = coco.cpu().double().numpy()
    rest = model(model.zero_params(1)).vertices[0].detach().cpu().double().numpy()
    order = np.arange(len(data["vertices"])) / len(data["vertices"])
    train, validation = order < 1 - TEST_SHARE - VALIDATION_SHARE, (order >= 1 - TEST_SHARE - VALIDATION_SHARE) & (order < 1 - TEST_SHARE)
    test = order >= 1 - TEST_SHARE
    vertex = np.zeros((len(LEARNED_NAMES), CORE_VERTICES + FRAME_VERTICES), dtype=np.int32)
    weight = np.zeros(vertex.shape, dtype=np.float32)
    scores = {}
    for i, name in enumerate(LEARNED_NAMES):
        row = coco[coco_names.index(MODEL_NAMES.get(name, name))]
        ids = support(row, rest)
        prior = row[ids] / row[ids].sum()
        candidates = data["vertices"][:, ids].astype(np.float64)
        targets, confidence = data["points"][:, INDEX[name]], data["confidence"][:, INDEX[name]]
        confidence = np.where(np.isfinite(targets).all(1) & (confidence >= LANDMARK_MIN_CONFIDENCE), confidence, 0.0)
        targets = np.nan_to_num(targets)
        checked = validation & (confidence > 0)
        strength = min(PRIORS, key=lambda p: np.median(miss_mm(candidates[checked], targets[checked],
                       fit_landmark(candidates[train], targets[train], confidence[train], prior, p))))  # fmt: skip
        fitted = train | validation
        weights = fit_landmark(candidates[fitted], targets[fitted], confidence[fitted], prior, strength)
        vertex[i, : len(ids)], weight[i, : len(ids)] = ids, weights
        scored = test & (confidence > 0)
        learned, original = miss_mm(candidates[scored], targets[scored], weights), miss_mm(candidates[scored], targets[scored], prior)
        scores[name] = {"test_bodies": int(scored.sum()), "prior_strength": strength,
                        "learned_median_mm": round(float(np.median(learned)), 1),
                        "learned_p90_mm": round(float(np.percentile(learned, 90)), 1),
                        "model_regressor_median_mm": round(float(np.median(original)), 1),
                        "model_regressor_p90_mm": round(float(np.percentile(original, 90)), 1)}  # fmt: skip
    return {"names": np.array(LEARNED_NAMES), "vertex": vertex, "weight": weight}, scores


def main() -> None:
    from ..body import load_body_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body", default="anny")
    parser.add_argument("--bodies", type=int, default=420, help="synthetic bodies rendered and detected")
    parser.add_argument("--minutes", type=float, default=22.0, help="stop rendering after this long")
    parser.add_argument("--cache", type=Path, help="an .npz of the detections: read if it exists, else written")
    args = parser.parse_args()
    if args.cache is not None and args.cache.exists():
        data = dict(np.load(args.cache))
    else:
        data = detections(args.body, args.bodies, args.minutes)
        if args.cache is not None:
            np.savez(args.cache, **data)
    model = load_body_model(args.body)
    arrays, scores = learn(data, model)
    path = landmark_file(args.body)
    partial = path.with_name(path.stem + ".partial.npz")  # written whole, then put in place
    np.savez_compressed(partial, **arrays)
    partial.replace(path)
    manifest = {
        "what": "the person detector's (MediaPipe Pose 0.10.21, complexity 1) 3D landmarks as affine blends of "
        f"the {args.body} body's posed vertices (rows sum to 1), for fitting a body to detected landmarks",
        "made_with": f"python -m lvd_core.landmarks.learn --body {args.body} --bodies {args.bodies} --minutes {args.minutes:g}",
        "data": f"{len(data['vertices'])} synthetic clothed bodies of the first {data['index'].max() + 1} (lvd_core.synth "
        f"SyntheticScans seed {SEED}, default ScanRealism, "
        f"every pose family, facing uniform over +-180 deg) where the detector found the person on 8 rendered views; "
        f"detections with confidence >= {LANDMARK_MIN_CONFIDENCE}; the last {TEST_SHARE:.0%} held out for the test, "
        f"the {VALIDATION_SHARE:.0%} before them pick each landmark's prior strength",
        "families": {f: int((data["family"] == f).sum()) for f in np.unique(data["family"])},
        "fit": f"per landmark: least squares for weights summing to 1 over the {CORE_VERTICES} strongest vertices of "
        f"the model's keypoint regressor and {FRAME_VERTICES} spread within {FRAME_RADIUS * 1000:.0f} mm, weighted by "
        f"detection confidence, pulled to the model's regressor (strength from {PRIORS} per body), bodies missing by "
        f"over {OUTLIER_SHARE}x the median dropped and refitted",
        "test": scores,
        "sha256_npz": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    path.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name, score in scores.items():
        print(name, score)


if __name__ == "__main__":
    main()
