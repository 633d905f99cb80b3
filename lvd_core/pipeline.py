"""From an input (scan or photo) to fitted body-model parameters: the one pipeline the CLI and Blender share.

fit_scan: load and clean -> canonical frame (Z up, height 1, exact inverse) -> bodies: the person's landmarks and
facing from rendered views (lvd_core.landmarks), the scan turned to the trained facing -> distance grid -> LVD
descent from the template, for a few facing hypotheses at once -> body fit to the predicted vertices of the facings
the body model takes best (and the landmarks) -> optional refinement against the scan surface -> the facing whose body lies
closest to the scan, mapped back to the input's own frame and units. fit_scans does the same for many scans,
the descent and the fit batched (for a GPU).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .body import BodyModel, BodyParams, load_body_model
from .canonical import scan_frame, yaw_rotation
from .checkpoints import MIRRORED_BODIES, load_network, resolve_weights
from .descent import descend
from .devices import pick_device
from .fit import FitOptions, LandmarkTargets, fit_to_vertices, refine_to_surface
from .hands import EITHER_SIDE, HAND_POINTS, fit_either_side, without_forearm
from .inputs.frame import QUARTER_TURNS, NormalizedFrame, apply_transform, normalize
from .inputs.grids import PAPER_BODY, PAPER_HAND, compact_grid, turned_grids
from .inputs.scan import Scan, ScanError, load_scan
from .landmarks.detect import Landmarks
from .landmarks.regressor import landmark_targets
from .limbs import search_limbs
from .nets.compact import CompactScanLVD
from .results import FitResult, InputError, StageTimer, report_progress
from .scan_checks import check_explained, check_one_figure, stand_up, thinned, turned, turned_back
from .transfer import TRANSFERRED_BODIES, source_model, transferred
from .synth.poses import relaxed_finger_pose

SURFACE_POINTS = 4000  # scan points the surface refinement matches against
# Facings LVD tries on a body scan where the person detector found no person (its facing is then unknown).
FALLBACK_FACINGS = 4
# A fit is also doubtful when the fitted body's landmarks lie, at the median, farther than this share of the
# model's size (80 mm on Anny's body) from the detected ones: the fit and the detector disagree on the pose.
LANDMARK_DOUBT_SHARE = 0.05
# Facings (of several) per scan that go through the full fit and the refinement, ranked by how well a quick fit
# takes their LVD vertices; `_ScanInModel.choose` keeps the refined one lying closest to the scan (2 beat 1 and 3
# on held-out hands: benchmarks/README.md).
SHORTLIST = 2
# Yaws (degrees, about the network's up axis) at which LVD also reads the likeliest facings of a scan, their
# vertices the mean of the descents: it helps hands (no usual orientation), not bodies (benchmarks/README.md).
# Every facing is read at yaw 0 first; only the READ_AGAIN likeliest are read again at the others.
YAW_JITTER_DEG = {"hand": (-10.0, 0.0, 10.0)}
# Facings (of several) per scan read again at those other yaws: the best by a quick fit of their yaw-0 readings; a
# quick fit of their mean readings then shortlists SHORTLIST of them (2 here changed the choice on held-out hands).
READ_AGAIN = 3
# Symmetric bodies (BodyModel.mirror_twins) are also read mirrored left-right: on the mirrored scan the network's
# vertex i lands where vertex i's twin lies on the scan, so the fit gets twice the targets for 2x the LVD time.
MIRROR = np.diag([-1.0, 1.0, 1.0])
# A fit is doubtful when the network's vertices lie, at the median, farther than this share of the model's size
# (28 mm on Anny's 1.63 m body, 2.8 mm on its hand) from the fitted body: the network then put whole parts on
# the wrong limbs, which the fit cannot follow. Calibrated on held-out scans (benchmarks/README.md): it marks the
# fits over 100 mm mean vertex error and few others; on hands it is looser.
DOUBT_SHARE = 0.017


# ---------------------------------------------------------------------------------------------------------
# frames


def model_frame(scan: Scan, body: BodyModel, canonical: NormalizedFrame) -> tuple[np.ndarray, bool]:
    """(4, 4) input -> model frame (metres, the model's up axis, bounding box at the origin) and whether the
    fit must find the scale (unitless scans: their size in metres is unknown)."""
    metres = canonical.metres_per_canonical
    fit_scale = metres is None
    if fit_scale:  # unitless: size it like the neutral model, the fit's scale finds the rest
        metres = neutral_size(body)
    to_model_up = QUARTER_TURNS[("z", body.up_axis)]
    matrix = np.eye(4)
    matrix[:3, :3] = metres * to_model_up @ (canonical.scale * canonical.rotation)
    matrix[:3, 3] = metres * to_model_up @ canonical.translation
    return matrix, fit_scale


def neutral_size(body: BodyModel) -> float:
    """Metres: the neutral model's height (hands: its largest extent)."""
    with torch.no_grad():
        rest = body(body.zero_params(1)).vertices[0].cpu().numpy()
    extent = rest.max(0) - rest.min(0)
    return float(extent.max() if body.kind == "hand" else extent["xyz".index(body.up_axis)])


# ---------------------------------------------------------------------------------------------------------
# LVD


def orientation_hypotheses(kind: str, facings: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The canonical-frame rotations LVD tries, and their yaw angles (radians): `facings` yaws about the up
    axis; hands, whose principal axes leave the direction of the longest one uncertain, also each yaw turned
    upside down (half a turn about X)."""
    angles = np.arange(facings) * 2 * np.pi / facings
    rotations = [yaw_rotation(a) for a in angles]
    if kind == "hand" and facings > 1:
        flip = np.diag([1.0, -1.0, -1.0])
        angles, rotations = np.concatenate([angles, angles]), rotations + [r @ flip for r in rotations]
    return angles, rotations


@dataclass
class ScanPrediction:
    """LVD on one scan: predicted (F, N, 3) vertices in the input frame for each facing tried, the canonical
    frame and the facing angles (F,) in degrees."""

    predicted: np.ndarray
    canonical: NormalizedFrame
    angles_deg: np.ndarray


def predict_vertices(
    network, scans: list[Scan], device, iterations: int, facings: int, twins: np.ndarray | None = None,
    yaws_deg=(0.0,), only: list[list[int]] | None = None,
) -> tuple[list[ScanPrediction], np.ndarray]:
    """LVD on scans, every scan and facing in one batch: a ScanPrediction per scan and the vertex ids (N,).
    Each facing's vertices are the mean of the descents at its `yaws_deg` turns. only: per scan, the facings
    (indices into the `facings` hypotheses, the same count for every scan) read; None: all of them. With the
    body's mirror twins (V,), each scan is also read mirrored (see MIRROR): N is then twice the network's
    vertices, the second half standing for their twins."""
    if isinstance(network, CompactScanLVD):
        every_angle, every_rotation = orientation_hypotheses(scans[0].kind, facings)
        chosen = [list(range(len(every_rotation)))] * len(scans) if only is None else only
        angles = [every_angle[c] for c in chosen]
        rotations = [[every_rotation[f] for f in c] for c in chosen]
        jitters = [yaw_rotation(np.radians(d)) for d in yaws_deg]
        readings = [np.eye(3)] if twins is None else [np.eye(3), MIRROR]
        frames = [scan_frame(scan) for scan in scans]
        canonicals = [frame.to_canonical(scan.points.astype(np.float64)) for frame, scan in zip(frames, scans)]
        # Mirrored last, in the network's frame, where x is left-right whatever the facing hypothesis.
        turns = [[r @ j @ m for m in readings for r in per_scan for j in jitters] for per_scan in rotations]
        preset = compact_grid(network.resolution, network.box_half_size)
        grids = np.stack([g for c, per_scan in zip(canonicals, turns) for g in turned_grids(preset, c, per_scan)])  # the scan turned by t^-1
        network_ids = np.asarray(network.checkpoint_metadata["vertex_ids"])
        vertex_ids = network_ids if twins is None else np.concatenate([network_ids, twins[network_ids]])
        start = network.template[None].expand(len(grids), -1, -1)
    else:  # the authors' networks: Y up, height 1.5, 128^3, start at the origin, all vertices
        frames = [normalize(scan, up_out="y", height=1.5) for scan in scans]
        preset = PAPER_HAND if scans[0].kind == "hand" else PAPER_BODY
        grids = np.stack([preset.grid(f.to_canonical(s.points.astype(np.float64)), workers=-1) for f, s in zip(frames, scans)])
        angles, jitters, readings = [np.zeros(1)] * len(scans), [np.eye(3)], [np.eye(3)]
        rotations, turns = [[np.eye(3)]] * len(scans), [[np.eye(3)]] * len(scans)
        vertex_ids = np.arange(network.vertex_count)
        start = torch.zeros(len(grids), 1, 3)
    with torch.no_grad():
        features = network.encode(torch.from_numpy(grids).float().to(device))
        result = descend(network, features, start.to(device), iterations=iterations)
    predicted = result.vertices.double().cpu().numpy().reshape(len(scans), len(turns[0]), -1, 3)
    predictions = []
    for frame, per_turn, scan_turns, scan_angles in zip(frames, predicted, turns, angles):
        unrotated = np.stack([p @ t.T for p, t in zip(per_turn, scan_turns)])  # (readings * facings * jitters, n, 3)
        per_facing = unrotated.reshape(len(readings), len(scan_angles), len(jitters), -1, 3).mean(2)
        per_facing = np.concatenate(list(per_facing), axis=1)  # (facings, readings * n, 3)
        predictions.append(ScanPrediction(frame.to_input(per_facing), frame, np.degrees(scan_angles)))
    return predictions, vertex_ids


# ---------------------------------------------------------------------------------------------------------


def fit_scan(source, faces: np.ndarray | None = None, **options) -> FitResult:
    """Fit a body to one scan: a path, or vertices (N, 3) with `faces` (F, 3) or None (a point cloud).
    Options as for `fit_scans`. Bad input raises ScanError / InputError / BodyModelError / CheckpointError (all
    ValueError) with a one-line message."""
    item = source if faces is None and not isinstance(source, np.ndarray) else (source, faces)
    [result] = fit_scans([item], **options)
    if isinstance(result, Exception):
        raise result
    return result


def fit_scans(
    sources: list,
    *,
    body: str = "anny",
    model_path: str | Path | None = None,
    units: str | None = None,
    up: str | None = None,
    weights: str | Path | None = None,
    checkpoint_folder: str | Path | None = None,
    device: str = "auto",
    iterations: int | None = None,
    facings: int | None = None,
    refine: bool = True,
    landmarks: bool = True,
    limbs: bool = True,
    progress=None,
    cancel: threading.Event | None = None,
) -> list[FitResult | Exception]:
    """Fit `body` to scans: paths, or (vertices (N, 3), faces (F, 3) | None) pairs. The LVD descent and the
    body fit run as one batch of every scan (and facing): what a GPU wants; loading and the surface refinement
    run scan by scan. Returns, in order, each scan's FitResult, or the ValueError (ScanError, ...) that made
    it unfittable: one bad scan does not stop the others. Problems of the options (body model, checkpoint)
    raise. Timings are those of the whole batch.

    body "anny-hand" fits each scan with the left and the right hand and keeps the side lying closer to the scan
    (lvd_core.hands; FitResult.body_name names it); "anny-hand-left" / "-right" force a side. Hand scans lose
    their forearm, if any, before the fit (lvd_core.hands.without_forearm).

    facings: how many facings (about the up axis, evenly spaced) LVD tries. Bodies: with `landmarks`, a person
    detector on rendered views finds the person's facing (lvd_core.landmarks) and the facings start from it (1 by
    default); where it finds no person, or not surely (Landmarks.sure), FALLBACK_FACINGS by default, starting
    from the found facing or else the usual convention (the person faces -Y once the scan is Z up, i.e. +Z in a
    Y-up file, Blender's front view). landmarks=False skips the detector: the usual convention, 1 facing by
    default, no landmark targets. Hands have no usual orientation: 4 by default, each also upside down; every
    facing is read once, the READ_AGAIN likeliest (by a quick fit) also at YAW_JITTER_DEG's other yaws.
    Refined body scans have their misread limbs found again on the scan after the choice of facing
    (lvd_core.limbs; limbs=False skips it). Body scans whose person lies or stands on their head in the file are
    stood up first (with `landmarks`; their result is turned back, FitResult.upright_turn says how); scans of two
    people are refused (lvd_core.scan_checks).
    progress(fraction, message) is called between stages; setting `cancel` stops at the next stage with
    FitCancelled.
    """
    if body in EITHER_SIDE:  # hands of either side: both fitted, the one the scan supports kept
        options = dict(model_path=model_path, units=units, up=up, weights=weights, checkpoint_folder=checkpoint_folder,
                       device=device, iterations=iterations, facings=facings, refine=refine, cancel=cancel)  # fmt: skip
        lap = StageTimer()
        read_once = [_read_or_keep(source, units, up, "hand") for source in sources]  # not once per side
        lap("load")
        fits = fit_either_side(fit_scans, read_once, EITHER_SIDE[body], progress, **options)
        return [fit if isinstance(fit, Exception) else replace(fit, timings={**fit.timings, "load": lap.timings["load"]}) for fit in fits]
    if weights is None and body in TRANSFERRED_BODIES:  # no network of its own: Anny's fit, then the user's model to it
        target = load_body_model(body, model_path)
        anny = fit_scans(sources, body=source_model(target), units=units, up=up, checkpoint_folder=checkpoint_folder,
                         device=device, iterations=iterations, facings=facings, refine=refine, landmarks=landmarks,
                         limbs=limbs, progress=progress, cancel=cancel)  # fmt: skip
        return transferred(anny, target)
    lap = StageTimer()
    report_progress(progress, 0.0, "loading the scan", cancel)
    torch_device = pick_device(device)
    model = load_body_model(body, model_path, device=torch_device)
    kind = model.kind
    results: list[FitResult | Exception | None] = [None] * len(sources)
    scans: dict[int, Scan] = {}
    for index, source in enumerate(sources):
        try:
            scans[index] = source if isinstance(source, Scan) else read_scan(source, units, up, kind)
        except ValueError as error:
            results[index] = error
    lap("load")
    network = load_network(resolve_weights(body, weights, checkpoint_folder), torch_device)
    meta = getattr(network, "checkpoint_metadata", {})
    if isinstance(network, CompactScanLVD) and meta.get("body") not in (model.name, body, MIRRORED_BODIES.get(body)):
        raise InputError(f"the checkpoint was trained for the {meta.get('body')} body model, not {body}: pass matching --weights")
    if network.vertex_count > model.vertex_count:
        raise InputError(f"the checkpoint predicts {network.vertex_count} vertices, the {body} model has {model.vertex_count}")
    lap("network")
    if not scans:
        return results
    order = list(scans)
    people, upright = {}, {}
    if landmarks and kind == "body" and isinstance(network, CompactScanLVD):
        report_progress(progress, 0.1, "finding the person (landmarks)", cancel)
        for i in order:  # a person lying or upside down in the file is stood up (and turned back at the end)
            scans[i], upright[i], people[i] = stand_up(scans[i], keep_units=units is not None)
        lap("landmarks")
    if kind == "body":  # one person a scan: people side by side are refused before the fit
        order = [i for i in order if not _refused(results, i, check_one_figure, scans[i])]
    if not order:
        return results
    report_progress(progress, 0.15, "predicting vertices (LVD)", cancel)
    mirrored = meta.get("body") == MIRRORED_BODIES.get(body)
    twins = model.mirror_twins() if isinstance(network, CompactScanLVD) else None
    plan = {i: facing_plan(kind, facings, people.get(i)) for i in order}
    # Each scan turned about its up axis so its person faces the trained way (and mirrored for a mirror twin's network).
    turns = {i: (MIRROR if mirrored else np.eye(3)) @ up_axis_turn(scans[i].up, -plan[i][0]) for i in order}

    def read(group: list[int], count: int, **which) -> tuple[list[ScanPrediction], np.ndarray]:
        """predict_vertices of the group's scans, back in each scan's own frame (its canonical frame the fit's)."""
        found, vertex_ids = predict_vertices(network, [turned(scans[i], turns[i]) for i in group], torch_device,
                                             iterations or 10, count, twins, **which)  # fmt: skip
        for i, prediction in zip(group, found):
            prediction.predicted = prediction.predicted @ turns[i]
            prediction.canonical = scan_frame(scans[i])
            prediction.angles_deg = prediction.angles_deg + np.degrees(plan[i][0])
        return found, vertex_ids

    predictions = {}
    for count in sorted({c for _, c in plan.values()}):  # one batch per number of facings
        group = [i for i in order if plan[i][1] == count]
        found, vertex_ids = read(group, count)
        predictions.update(zip(group, found))
    lap("lvd")
    report_progress(progress, 0.45, "fitting the body", cancel)
    ids = torch.as_tensor(vertex_ids, device=torch_device)
    placed = {i: _ScanInModel(model, scans[i], predictions[i], vertex_ids, people.get(i)) for i in order}
    # The fit's options hold fit_scale, and a batch's scans share their number of facings: one batch for each.
    groups = [[i for i in order if (placed[i].fit_scale, len(placed[i].targets)) == key]
              for key in dict.fromkeys((placed[i].fit_scale, len(placed[i].targets)) for i in order)]  # fmt: skip
    extra_yaws = [yaw for yaw in YAW_JITTER_DEG.get(kind, ()) if yaw != 0.0] if isinstance(network, CompactScanLVD) else []
    for group in groups:
        _shortlist(model, [placed[i] for i in group], ids, READ_AGAIN if extra_yaws else SHORTLIST)
    lap("fit")
    if extra_yaws:  # the shortlisted facings read again at the other yaws
        for group in groups:
            again, _ = read(group, plan[group[0]][1], yaws_deg=extra_yaws, only=[placed[i].shortlist for i in group])
            for i, prediction in zip(group, again):  # the mean of all yaws' readings, yaw 0's among them
                placed[i].average_in(placed[i].shortlist, prediction.predicted, len(extra_yaws) / (len(extra_yaws) + 1))
        lap("lvd")
        for group in groups:
            _shortlist(model, [placed[i] for i in group], ids, SHORTLIST)
        lap("fit")
    candidates = {}
    for group in groups:
        candidates.update(zip(group, _full_fit(model, [placed[i] for i in group], ids)))
    lap("fit")
    if refine:
        report_progress(progress, 0.75, "refining against the scan surface", cancel)
        for i in order:
            candidates[i] = [
                refine_to_surface(model, fit, placed[i].targets_of(facing), [placed[i].surface_sample()], ids,
                                  placed[i].options, placed[i].landmark_targets(1))
                for facing, fit in zip(placed[i].shortlist, candidates[i])
            ]  # fmt: skip
        lap("refine")
    fits = {i: placed[i].choose(candidates[i]) for i in order}
    if refine and limbs and kind == "body":
        report_progress(progress, 0.9, "finding misread limbs on the scan", cancel)
        fits = {i: placed[i].with_limbs_found(model, fits[i], ids) for i in order}
        lap("limbs")
    report_progress(progress, 1.0, "done", cancel)
    size_mm = 1000 * neutral_size(model)
    for i in order:
        results[i] = placed[i].result(model, fits[i], dict(lap.timings), len(order), DOUBT_SHARE * size_mm,
                                      LANDMARK_DOUBT_SHARE * size_mm)  # fmt: skip
        if kind == "body" and not _refused(results, i, check_explained, scans[i], results[i]):  # one carrying another
            results[i] = turned_back(results[i], upright.get(i, np.eye(3)))
    return results


def read_scan(source, units: str | None, up: str | None, kind: str) -> Scan:
    """A scan as fit_scans reads it (a path, or (vertices, faces)): hands at HAND_POINTS surface samples and
    without their forearm (the network reads hands ending at the wrist)."""
    if kind != "hand":
        return load_scan(source, units=units, up=up, kind=kind)
    return without_forearm(load_scan(source, units=units, up=up, kind=kind, max_points=HAND_POINTS), detect_size=units is None)


def _read_or_keep(source, units: str | None, up: str | None, kind: str):
    """read_scan's Scan, or the source itself where it cannot be read (each fit then reports the error)."""
    try:
        return read_scan(source, units, up, kind)
    except ValueError:
        return source


def _refused(results: list, index: int, check, *args) -> bool:
    """Runs check(*args); its ScanError, if any, becomes the scan's result (True)."""
    try:
        check(*args)
    except ScanError as error:
        results[index] = error
        return True
    return False


def facing_plan(kind: str, facings: int | None, person: Landmarks | None) -> tuple[float, int]:
    """The yaw (radians) a scan's facings start from and how many LVD tries (see fit_scans)."""
    if person is not None and person.sure:
        return person.facing_yaw, facings or 1
    if person is not None:  # a body scan whose person was not found, or not surely: search from their facing
        return (person.facing_yaw if person.found else 0.0), facings or FALLBACK_FACINGS
    return 0.0, facings or (4 if kind == "hand" else 1)


class _ScanInModel:
    """One scan in the model frame (metres, the model's up axis) on its way through fit_scans: its LVD targets
    per facing, the facing chosen, the person's landmarks (when looked for) and the fit's options."""

    def __init__(self, model: BodyModel, scan: Scan, prediction: ScanPrediction, vertex_ids: np.ndarray,
                 person: Landmarks | None = None):  # fmt: skip
        self.scan, self.prediction, self.vertex_ids, self.person = scan, prediction, vertex_ids, person
        self.to_model, self.fit_scale = model_frame(scan, model, prediction.canonical)
        self.device, self.dtype = model.device, model.dtype
        self.landmarks = self._landmarks_in_model(model)
        self.targets = np.stack([apply_transform(self.to_model, p) for p in prediction.predicted])  # (F, N, 3)
        self.points = apply_transform(self.to_model, scan.points.astype(np.float64))
        self.sample = np.random.default_rng(0).choice(len(self.points), min(SURFACE_POINTS, len(self.points)), replace=False)
        self.options = scan_fit_options(model, self.fit_scale)
        self.shortlist = list(range(len(self.targets)))  # the facings that go through the full fit (and the refinement)
        self.best = 0
        self.residual = float("nan")  # metres: median scan-to-body distance of the chosen fit (set by choose)

    def _landmarks_in_model(self, model: BodyModel) -> LandmarkTargets | None:
        """The person's landmarks as targets for the body model's own (batch 1, model frame), or None when the
        model has no landmark regressor or the person was not surely found (lvd_core.landmarks.regressor)."""
        if self.person is None or not self.person.sure:
            return None
        located = apply_transform(self.to_model, self.prediction.canonical.to_input(self.person.points))
        return landmark_targets(model, located, self.person.confidence, len(self.vertex_ids))

    def landmark_targets(self, count: int) -> LandmarkTargets | None:
        """The landmark targets repeated for `count` fits of this scan (None: none)."""
        if self.landmarks is None:
            return None
        return LandmarkTargets(self.landmarks.regressor, self.landmarks.targets.repeat(count, 1, 1),
                               self.landmarks.weights.repeat(count, 1), self.landmarks.huber)  # fmt: skip

    def landmark_disagreement(self, fit) -> float:
        """Metres: median distance from the fitted body's landmarks to the detected ones that weigh (NaN: none)."""
        if self.landmarks is None or not (self.landmarks.weights > 0).any():
            return float("nan")
        fitted = self.landmarks.regressor @ fit.vertices[0].to(self.landmarks.regressor.dtype)
        distance = (fitted - self.landmarks.targets[0]).norm(dim=-1)[self.landmarks.weights[0] > 0]
        return float(distance.median())

    def average_in(self, facings: list[int], predicted: np.ndarray, weight: float) -> None:
        """Blends other LVD vertices (F, N, 3) (input frame) of `facings` into theirs: weight is the new ones' share."""
        blended = (1 - weight) * self.prediction.predicted[facings] + weight * predicted
        self.prediction.predicted[facings] = blended
        self.targets[facings] = np.stack([apply_transform(self.to_model, p) for p in blended])

    def targets_of(self, facing: int) -> torch.Tensor:
        """(1, N, 3) the LVD vertices of one facing, model frame."""
        return torch.as_tensor(self.targets[facing : facing + 1], dtype=self.dtype, device=self.device)

    def choose(self, fits: list):
        """Of the lvd_core.fit.BodyFits (one per shortlisted facing, refined against the scan), the one whose body
        lies closest to the scan: the smallest median scan-to-body distance (the result's residual_mm; the median
        shrugs off an object held in the hand). The shortlist has already dropped the facings whose LVD vertices
        the body model cannot take (figures at SHORTLIST)."""
        distances = [self.scan_distance(fit) for fit in fits]
        k = int(np.argmin(distances))
        self.best, self.residual = self.shortlist[k], distances[k]
        return fits[k]

    def scan_distance(self, fit) -> float:
        """Metres: the median distance from the scan to the fitted body (batch 1)."""
        return _median_distance(thinned(self.points), fit.vertices[0].detach().cpu().double().numpy())

    def surface_sample(self) -> torch.Tensor:
        return torch.as_tensor(self.points[self.sample], dtype=self.dtype, device=self.device)

    def with_limbs_found(self, model: BodyModel, fit, ids: torch.Tensor):
        """The chosen (refined) fit with its limbs found again on the scan (lvd_core.limbs) and, where any moved,
        refined again without the LVD vertices of the limbs that moved. After the choice of facing: a body
        facing the wrong way must not win it by having its limbs rearranged."""
        found = search_limbs(model, fit.params, self.points[self.sample])
        if not found.moved.any():
            return fit
        anchors = torch.as_tensor(~found.moved[self.vertex_ids], dtype=self.dtype)[None]
        fit = refine_to_surface(model, replace(fit, params=found.params), self.targets_of(self.best), [self.surface_sample()],
                                ids, self.options, self.landmark_targets(1), target_weights=anchors)  # fmt: skip
        self.residual = self.scan_distance(fit)
        return fit

    def result(self, model: BodyModel, fit, timings: dict, batch_size: int, doubt_mm: float,
               landmark_doubt_mm: float) -> FitResult:  # fmt: skip
        input_from_model = np.linalg.inv(self.to_model)
        vertices_model = fit.vertices[0].detach().cpu().double().numpy()
        disagreement_mm = 1000 * float(fit.residuals[0].median())
        landmark_disagreement_mm = 1000 * self.landmark_disagreement(fit)
        return FitResult(
            body_name=model.name,
            params=fit.params.to(device="cpu"),
            input_from_model=input_from_model,
            vertices_input=apply_transform(input_from_model, vertices_model),
            lvd_vertices_input=self.prediction.predicted[self.best],
            lvd_vertex_ids=self.vertex_ids,
            # In the model frame: millimetres for scans with units; for unitless ones, of a model-sized body.
            residual_mm=1000 * self.residual,
            units=self.scan.units,
            timings=timings,
            facing_deg=float(self.prediction.angles_deg[self.best]) % 360,
            person_found=None if self.person is None else self.person.found,
            batch_size=batch_size,
            disagreement_mm=disagreement_mm,
            doubtful=disagreement_mm > doubt_mm or landmark_disagreement_mm > landmark_doubt_mm,
            landmark_disagreement_mm=landmark_disagreement_mm,
        )


def _shortlist(model: BodyModel, group: list[_ScanInModel], ids: torch.Tensor, keep: int) -> None:
    """Narrows each scan's `shortlist` to the `keep` facings whose quick bodies stay closest to their LVD vertices
    (a quick fit of every shortlisted facing of every scan, batched; the scans share fit_scale and their number of
    facings)."""
    count = len(group[0].shortlist)
    if count <= keep:
        return
    quick = FitOptions(fit_scale=group[0].fit_scale, pose_iterations=2, alternations=0, full_iterations=2,
                       robust_iterations=0, shape_restarts=False)  # fmt: skip
    every = torch.as_tensor(np.concatenate([p.targets[p.shortlist] for p in group]), dtype=model.dtype, device=model.device)
    residuals = fit_to_vertices(model, every, ids, options=quick).residuals.mean(1).cpu().numpy()
    for k, placed in enumerate(group):
        placed.shortlist = [placed.shortlist[int(f)] for f in np.argsort(residuals[k * count : (k + 1) * count])[:keep]]


def _full_fit(model: BodyModel, group: list[_ScanInModel], ids: torch.Tensor) -> list[list]:
    """The full body fit of every shortlisted facing of scans that share fit_scale, batched. Returns, per scan,
    the (batch-1) lvd_core.fit.BodyFit of each facing in its `shortlist`."""
    targets = torch.cat([placed.targets_of(facing) for placed in group for facing in placed.shortlist])
    landmarks = [placed.landmark_targets(len(placed.shortlist)) for placed in group]
    fit = fit_to_vertices(model, targets, ids, options=group[0].options, landmarks=_joined(landmarks, group, model))
    items = (fit.item(b) for b in range(len(targets)))
    return [[next(items) for _ in placed.shortlist] for placed in group]


def _joined(landmarks: list[LandmarkTargets | None], group: list[_ScanInModel], model: BodyModel) -> LandmarkTargets | None:
    """The batch's landmark targets, scan after scan (a scan without any weighs nothing); None when none has any."""
    known = [t for t in landmarks if t is not None]
    if not known:
        return None
    regressor = known[0].regressor
    count = regressor.shape[0]
    zeros = lambda n: LandmarkTargets(regressor, torch.zeros(n, count, 3, dtype=model.dtype, device=model.device),  # noqa: E731
                                      torch.zeros(n, count, dtype=model.dtype, device=model.device))  # fmt: skip
    parts = [t if t is not None else zeros(len(placed.shortlist)) for t, placed in zip(landmarks, group)]
    return LandmarkTargets(regressor, torch.cat([p.targets for p in parts]), torch.cat([p.weights for p in parts]), known[0].huber)


def up_axis_turn(up: str, yaw: float) -> np.ndarray:
    """(3, 3) the rotation by `yaw` radians about the up axis `up` of an input frame (the canonical yaw_rotation
    seen from the input's axes)."""
    to_z = QUARTER_TURNS[(up, "z")]
    return to_z.T @ yaw_rotation(yaw) @ to_z


def held_extremities(body: BodyModel) -> dict:
    """FitOptions fields that hold a whole body's fingers, toes and eyes (hands: nothing): a network's vertex
    subset holds a handful of their vertices, too few to pose them (they come out crumpled), and freezing
    them makes the fit 2-3x faster. The fingers are held relaxed (slightly curled, as hands at rest are), not
    straight: fingers carry a fifth of Anny's vertices."""
    if body.kind != "body":
        return {}
    extremities = ("toe", "finger", "metacarpal", "eye")
    frozen = tuple(n for n in body.joint_names if n.startswith(extremities))
    return {"frozen_joints": frozen, "frozen_pose": relaxed_finger_pose(body)}


def scan_fit_options(body: BodyModel, fit_scale: bool) -> FitOptions:
    """The fit for network predictions (centimetre-level errors, so fewer final iterations than for exact
    targets), extremities held (`held_extremities`). A whole body's shape restarts take 2 steps, not 4: on 10
    held-out clothed scans 42.5 vs 42.3 mm, 12% less fitting time."""
    probes = {"probe_iterations": 2} if body.kind == "body" else {}
    return FitOptions(fit_scale=fit_scale, full_iterations=6, robust_iterations=3, **probes, **held_extremities(body))


def _median_distance(source: np.ndarray, target: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    return float(np.median(cKDTree(target).query(source, k=1)[0]))
