"""Hand scans as they come: either hand, with or without the forearm.

Handedness: `anny-hand` fits both the left and the right hand model and keeps the side whose fitted hand lies
closer to the scan (`choose_side`), marked for a check when the other lies nearly as close or the kept hand's
fingers bend backwards (`fingertip_curl`); `anny-hand-left` / `anny-hand-right` force a side.
Forearms: `forearm_cut` finds, from the scan's shape alone, a forearm beyond the wrist (a long, round,
tapering part at one end of the scan's longest axis, ending where the hand widens into the palm) and
`without_forearm` drops it, so the network reads a hand as it was trained on (ending at, or just past, the wrist).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .inputs.scan import Scan, detect_units

# Bodies whose side is chosen per scan, and the side-specific bodies tried.
EITHER_SIDE = {"anny-hand": ("anny-hand-left", "anny-hand-right")}
# The side is uncertain when the other side's residual exceeds the chosen one's by less than this share of it.
# On 24 held-out synthetic hands the wrong side lay at least 10% farther (median 26%; benchmarks/results_hands.md);
# on the sample scans, which the hand network misreads on both sides, 2% and 7% (flagged) and 35% (the wrong side).
SIDE_MARGIN = 0.1
# Surface samples read from a hand scan: the hand network trained on 10k-point scans, and 200k (the bodies'
# default) cost 5x the grid time for nothing.
HAND_POINTS = 20_000
# A kept hand whose fingers bend backwards past this (fingertip_curl) is marked side_uncertain: real hands bend
# towards the palm (at rest +0.15), and a real hand read as the wrong side comes out bent backwards (the sample
# scans' right-hand fits, benchmarks/results_hands.md). The synthetic hands bend backwards too (test_hands.py).
BACKWARD_CURL = -0.15
PROFILE_SLICES = 48  # slices across the scan's longest axis for the cross-section profile
END_SLICES = 2  # slices at the scan's end that only graze it
# A slice is round (forearm) when its cross-section's minor spread is at least this share of its major one;
# a palm or flat fingers are about 0.3, forearms 0.6-0.9.
ROUND_ASPECT = 0.5
# The palm starts where the major spread exceeds the narrowest forearm slice (the wrist) by this factor.
PALM_WIDENING = 1.3
# A forearm is only cut when it reaches at least this many wrist radii (RMS; ~2.2 cm on an adult) beyond the
# wrist (~13 cm). On 40 synthetic 20-30 cm forearms it read 7.1-13 radii; round runs on hands without a forearm
# (a fist's or closed fingers' end) 2.1-5.8, and cutting there took 8-100% of the hand.
MIN_FOREARM_RADII = 6.0
# ... and only when its wrist is at least this share of the hand's widest spread (a finger is far thinner): on
# synthetic forearms 0.44-0.91; no hand without one (pointing ones included) had a round run long enough to ask.
FOREARM_TO_PALM = 0.3
# ... and only when the hand beyond the wrist spans at least this many wrist radii: on 62 synthetic hands with a
# forearm it spanned 4.3-9.1; where a curled hand's round fist ran on from the forearm (or made a "forearm" of
# its own), the "hand" left was its last 0.5-3.4 radii, and cutting there dropped 98-100% of the hand.
MIN_HAND_RADII = 3.9
# The cut lies this many wrist radii past the narrowest slice into the hand: the hand network was trained on scans
# ending 0-1 cm past the wrist joint, and on 30 synthetic forearms the narrowest slice lies 0.4 +- 0.8 cm before it.
CUT_INTO_HAND = 0.35


def cross_sections(points: np.ndarray, axis: np.ndarray, slices: int = PROFILE_SLICES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scan's profile along `axis` (3,): slice centres t (S,) along it, and each slice's major and minor
    spread (S,) (standard deviations of the slice's points across the axis; NaN for slices of < 10 points)."""
    along = points @ axis
    edges = np.linspace(along.min(), along.max(), slices + 1)
    index = np.clip(np.searchsorted(edges, along, side="right") - 1, 0, slices - 1)
    across = points - np.outer(along, axis)
    major, minor = np.full(slices, np.nan), np.full(slices, np.nan)
    for s in range(slices):
        members = across[index == s]
        if len(members) >= 10:
            spread = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(members.T))[::-1], 0.0))
            major[s], minor[s] = spread[0], spread[1]  # the third is ~0: the plane across the axis
    return (edges[:-1] + edges[1:]) / 2, major, minor


def forearm_run(major: np.ndarray, minor: np.ndarray) -> tuple[int, int]:
    """From slice 0 on: the forearm's slices (round) up to the wrist, the narrowest, before the hand starts: a
    slice widened past PALM_WIDENING times the wrist or a flat one (palm, fingers). The first END_SLICES slices
    with points are skipped (a cut's rim, a cap). -> (wrist slice, first hand slice); from a hand's end the
    wrist comes out at once, too close to pass for a forearm."""
    narrowest = None
    for s in np.flatnonzero(~np.isnan(major))[END_SLICES:]:
        flat = minor[s] < ROUND_ASPECT * major[s]
        if narrowest is not None and (flat or major[s] > PALM_WIDENING * major[narrowest]):
            return int(narrowest), int(s)
        if narrowest is None or major[s] <= major[narrowest]:
            narrowest = s
    return int(narrowest if narrowest is not None else 0), len(major)


def forearm_cut(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Where to cut a forearm off the hand in points (N, 3): (unit direction from the hand towards the elbow (3,),
    the cut's position along it, CUT_INTO_HAND past the wrist), so points with `points @ direction > position`
    go; None when the scan shows no forearm. Both ends of the scan's longest axis are tried; the longer forearm (in wrist radii) wins."""
    points = np.asarray(points, dtype=np.float64)
    centre = points.mean(0)
    centred = points - centre
    longest = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)[2][0]
    found = [cut for cut in (_forearm_from_end(centred, d) for d in (longest, -longest)) if cut is not None]
    if not found:
        return None
    direction, position, _ = max(found, key=lambda cut: cut[2])
    return direction, position + float(centre @ direction)


def _forearm_from_end(centred: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """forearm_cut for a forearm at the end where `direction` (3,) points, on centred points (N, 3), and the
    forearm's length in wrist radii; None when the round run there is too short (MIN_FOREARM_RADII), too thin
    beside the hand (a pointing finger: FOREARM_TO_PALM), or leaves too little hand beyond it (MIN_HAND_RADII)."""
    t, major, minor = cross_sections(centred, -direction)  # slice 0 at that end
    wrist, _ = forearm_run(major, minor)
    # The forearm's own axis (the longest one of a bent wrist's scan is a compromise): refine it on its points.
    arm = centred[centred @ -direction < t[wrist]]
    if len(arm) < 30:
        return None
    arm_axis = np.linalg.svd(arm - arm.mean(0), full_matrices=False)[2][0]
    arm_axis *= np.sign(arm_axis @ direction)
    t, major, minor = cross_sections(centred, -arm_axis)
    wrist, hand = forearm_run(major, minor)
    radius = float(np.hypot(major[wrist], minor[wrist]))
    length = (t[wrist] - t[0]) / radius
    if length < MIN_FOREARM_RADII or hand >= len(t) or radius < FOREARM_TO_PALM * np.nanmax(major[hand:]):
        return None
    if (t[np.flatnonzero(~np.isnan(major))[-1]] - t[wrist]) / radius < MIN_HAND_RADII:
        return None
    return arm_axis, -float(t[wrist] + CUT_INTO_HAND * radius), float(length)


def without_forearm(scan: Scan, detect_size: bool = True) -> Scan:
    """The scan less its forearm (see `forearm_cut`); unchanged when it has none. detect_size: re-detect the
    units on what is left (a forearm makes a hand scan too long to pass for a hand in any unit)."""
    cut = forearm_cut(scan.points)
    if cut is None:
        return scan
    direction, position = cut
    keep_points = scan.points @ direction <= position
    keep_vertices = scan.vertices @ direction <= position
    vertices, faces = scan.vertices[keep_vertices], None
    if scan.faces is not None:
        faces = scan.faces[keep_vertices[scan.faces].all(1)]
        new_index = np.cumsum(keep_vertices) - 1
        faces = new_index[faces]
    units = detect_units(vertices, scan.up, scan.kind) if detect_size else scan.units
    cleaning = {**scan.cleaning, "forearm_points_dropped": int((~keep_points).sum())}
    return replace(scan, vertices=vertices, faces=faces, points=scan.points[keep_points], units=units, cleaning=cleaning)


# ---------------------------------------------------------------------------------------------------------
# handedness


def fingertip_curl(body, joints: np.ndarray) -> float:
    """How far a posed hand's fingers bend towards its palm: the mean offset of the four fingers' last joints from
    the palm's plane (wrist, index and little knuckles) along the palm's normal, in wrist-to-knuckle lengths;
    joints (J, 3) of `body` (Anny hands). Positive: towards the palm, as fingers bend; negative: backwards. The
    palm's normal is anatomical: (index - wrist) x (little - wrist) points out of a right hand's palm (its thumb
    on the index side) and out of the back of a left one."""
    side = ".L" if body.name.endswith("left") else ".R"
    at = lambda name: joints[body.joint_names.index(name + side)]  # noqa: E731
    wrist, index, little = at("wrist"), at("finger2-1"), at("finger5-1")
    normal = np.cross(index - wrist, little - wrist) * (-1.0 if side == ".L" else 1.0)
    normal /= np.linalg.norm(normal)
    centre = (wrist + index + little) / 3
    tips = np.stack([at(f"finger{k}-3") for k in range(2, 6)])
    return float(((tips - centre) @ normal).mean() / np.linalg.norm((index + little) / 2 - wrist))


def fit_both_sides(fit_scans, sources: list, sides: tuple[str, str], progress=None, **options) -> list[tuple]:
    """`fit_scans` (lvd_core.pipeline's) of every scan with each of `sides` (body names): per scan, a tuple of
    the two outcomes (FitResult or the scan's ValueError), in the order of `sides`. progress(fraction,
    message) spans both."""
    outcomes = []
    for k, side in enumerate(sides):
        step = None if progress is None else (lambda f, m, k=k, side=side: progress((k + f) / len(sides), f"{side}: {m}"))
        fits = fit_scans(sources, body=side, progress=step, **options)
        outcomes.append([fit if isinstance(fit, Exception) else replace(fit, finger_curl=fitted_curl(fit)) for fit in fits])
    return list(zip(*outcomes))


def fitted_curl(result) -> float:
    """fingertip_curl of a fitted hand (a FitResult)."""
    import torch

    from .body import load_body_model

    body = load_body_model(result.body_name)
    with torch.no_grad():
        joints = body(result.params.to(device=body.device, dtype=body.dtype)).joints[0]
    return fingertip_curl(body, joints.cpu().double().numpy())


def choose_side(outcomes: tuple):
    """Of one scan's fits with each side's model, the one whose body lies closest to the scan (the smallest
    residual_mm, as facings are chosen), its timings those of both fits, marked side_uncertain when the other
    lies less than SIDE_MARGIN farther or its fingers bend backwards (BACKWARD_CURL); the first outcome when the
    scan could not be fitted."""
    fits = sorted((outcome for outcome in outcomes if not isinstance(outcome, Exception)), key=lambda fit: fit.residual_mm)
    if not fits:
        return outcomes[0]
    best = fits[0]
    timings = {stage: round(sum(fit.timings.get(stage, 0.0) for fit in fits), 3) for stage in best.timings}
    if len(fits) == 1:
        return replace(best, timings=timings)
    gap = fits[1].residual_mm - best.residual_mm
    bent_back = best.finger_curl < BACKWARD_CURL
    return replace(best, timings=timings, side_gap_mm=gap, fingers_bent_back=bent_back,
                   side_uncertain=gap < SIDE_MARGIN * best.residual_mm or bent_back)  # fmt: skip


def fit_either_side(fit_scans, sources: list, sides: tuple[str, str], progress=None, **options) -> list:
    """`fit_scans` (lvd_core.pipeline's) for a body whose side is chosen per scan (EITHER_SIDE): both sides
    fitted, `choose_side` keeps one; its FitResult.body_name names the side."""
    return [choose_side(outcomes) for outcomes in fit_both_sides(fit_scans, sources, sides, progress, **options)]
