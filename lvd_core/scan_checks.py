"""Body scans checked before and after the fit: the person stood up, and scans of two people refused.

- `stand_up`: a scan whose file says one axis is up while its person lies along another (or stands on their
  head) is turned, by a quarter or half turn found from the person's landmarks (lvd_core.landmarks.upright), so
  the person stands along the scan's up axis; its units are read again from the person's real height. The fit
  runs on the turned scan and its result is turned back into the file's frame (`turned_back`).
- `check_one_figure` (before the fit) and `check_explained` (after it): the fit takes one person, so a scan of two
  side by side (two separate person-sized figures) or of one carrying another (a good share of the scan far from
  the fitted body) is refused with a ScanError naming why. MediaPipe Pose reports one person a view, so these cues
  are geometric.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .canonical import scan_frame
from .inputs.frame import QUARTER_TURNS
from .inputs.scan import Scan, ScanError, detect_units
from .landmarks.detect import Landmarks, find_landmarks
from .landmarks.upright import is_upright, search_standing_turn, standing_turn

TWO_PEOPLE_FIX = "fit each person separately (crop the scan to the one person)"
# Separate figures: the scan's points on a grid of cells this share of its largest extent (3.4 cm on a 1.7 m
# person), joined across gaps under two cells (a scan's holes and gaps between an arm and the body stay joined).
FIGURE_CELL_SHARE = 0.02
# A figure is person-sized when it holds this share of the points and spans this share of the scan's height (a
# child or a crouching person beside an adult does; a held bag, a stray fragment do not) ...
FIGURE_POINT_SHARE = 0.15
FIGURE_HEIGHT_SHARE = 0.45
# ... and two such figures stand side by side when their height ranges overlap by this share of the shorter one's
# (not the upper and lower halves of one person cut apart by a hole).
SIDE_BY_SIDE_OVERLAP = 0.5
DISTANCE_POINTS = 40_000  # scan points a scan-to-body distance statistic is taken over (`thinned`)
# After the fit, a point lies far from the body beyond this share of the scan's height (14 cm on a 1.7 m person:
# beyond loose clothing and hair) ...
FAR_SHARE = 0.08
# ... and a scan with more than this share of its points far is not one person (benchmarks/results_scan_checks.md).
MAX_FAR_POINTS = 0.2
# ... while the fitted body lies on the scan: its vertices within this share of the scan's height of it (median).
# A body off the scan is a fit the network could not read (see pipeline.DOUBT_SHARE), not a second person.
ON_SCAN_SHARE = 0.03


def find_person(scan: Scan) -> Landmarks:
    """The person's 3D landmarks and facing on a body scan (lvd_core.landmarks), in its canonical frame."""
    return find_landmarks(scan_frame(scan).to_canonical(scan.points.astype(np.float64)))


def turned(scan: Scan, rotation: np.ndarray) -> Scan:
    """The scan with its vertices and points rotated by `rotation` (3, 3) (input frame)."""
    return replace(scan, vertices=scan.vertices @ rotation.T, points=(scan.points @ rotation.T).astype(np.float32))


def stand_up(scan: Scan, keep_units: bool = False) -> tuple[Scan, np.ndarray, Landmarks]:
    """The scan turned so its person stands along its up axis (the scan itself when they do, or when no turn
    finds them standing), the turn (3, 3) in the input frame (identity: none), and the person's landmarks on the
    returned scan. Its units are detected again on the turned scan unless `keep_units` (the user gave them)."""
    person = find_person(scan)
    turn = standing_turn(person)
    if turn is None:
        turn = search_standing_turn(scan_frame(scan).to_canonical(scan.points.astype(np.float64)))
    if turn is None or np.array_equal(turn, np.eye(3)):
        return scan, np.eye(3), person
    to_z = QUARTER_TURNS[(scan.up, "z")]
    turn = to_z.T @ turn @ to_z  # the canonical frame's turn in the input's axes
    standing = turned(scan, turn)
    if not keep_units:
        standing = replace(standing, units=detect_units(standing.vertices, standing.up, standing.kind))
    again = find_person(standing)
    if is_upright(again) is False:  # turned, the person is still not standing: the turn was misread
        return scan, np.eye(3), person
    return standing, turn, again


def turned_back(result, turn: np.ndarray):
    """A FitResult (lvd_core.results) of a scan turned by `turn` (3, 3) (see stand_up), in the scan's own frame again."""
    if np.array_equal(turn, np.eye(3)):
        return result
    back = np.eye(4)
    back[:3, :3] = turn.T
    return replace(result, input_from_model=back @ result.input_from_model, vertices_input=result.vertices_input @ turn,
                   lvd_vertices_input=result.lvd_vertices_input @ turn, upright_turn=turn)  # fmt: skip


def person_sized_figures(points: np.ndarray, up: str) -> list[tuple[float, float]]:
    """The (lowest, highest) heights of the separate person-sized figures among points (N, 3) with up axis `up`,
    in the points' units (see FIGURE_CELL_SHARE, FIGURE_POINT_SHARE, FIGURE_HEIGHT_SHARE)."""
    heights = points[:, "xyz".index(up)]
    cells = np.floor((points - points.min(0)) / (FIGURE_CELL_SHARE * np.ptp(points, axis=0).max())).astype(np.int64)
    grid = np.zeros(cells.max(0) + 1, dtype=bool)
    grid[tuple(cells.T)] = True
    labels, _ = ndimage.label(ndimage.binary_dilation(grid), structure=np.ones((3, 3, 3)))
    of_point = labels[tuple(cells.T)]
    figures = []
    for label, count in zip(*np.unique(of_point, return_counts=True)):
        low, high = heights[of_point == label].min(), heights[of_point == label].max()
        if count >= FIGURE_POINT_SHARE * len(points) and high - low >= FIGURE_HEIGHT_SHARE * np.ptp(heights):
            figures.append((float(low), float(high)))
    return figures


def check_one_figure(scan: Scan) -> None:
    """ScanError when two separate person-sized figures lie side by side in the scan (people standing apart, or one
    held clear of the other's body)."""
    figures = person_sized_figures(scan.points.astype(np.float64), scan.up)
    for (low, high), (other_low, other_high) in itertools.combinations(figures, 2):
        overlap = min(high, other_high) - max(low, other_low)
        if overlap >= SIDE_BY_SIDE_OVERLAP * min(high - low, other_high - other_low):
            raise ScanError(f"{scan.source} looks like two people: two separate person-sized figures ({high - low:.4g} and "
                            f"{other_high - other_low:.4g} {scan.units} tall) side by side; {TWO_PEOPLE_FIX}")  # fmt: skip


def thinned(points: np.ndarray, most: int = DISTANCE_POINTS) -> np.ndarray:
    """At most `most` of points (N, 3), every k-th. A scan's points cover its surface evenly (random surface samples
    of a mesh, a random subset of a large cloud), so these do too: a median or a share over them moves by a
    fraction of a percent, and a KD-tree query (~0.7 us a point) costs a fifth of the 200k points'."""
    return points[:: -(-len(points) // most)] if len(points) > most else points


def far_share(points: np.ndarray, vertices: np.ndarray, height: float) -> float:
    """The share of points (N, 3) farther from the body's vertices (V, 3) than FAR_SHARE of `height` (any frame and
    units, the same for all), over `thinned` points."""
    distances = cKDTree(vertices).query(thinned(points), k=1)[0]
    return float((distances > FAR_SHARE * height).mean())


def check_explained(scan: Scan, result) -> None:
    """ScanError when the fitted body (a FitResult (lvd_core.results), input frame) leaves more than MAX_FAR_POINTS of the
    scan far from it while the body itself lies on the scan: the scan holds more than one person (one carrying
    another), or one the fit could not read (not found by the person detector: a pose it misread, e.g. a sitting
    person's legs; the message says so)."""
    points = scan.points.astype(np.float64)
    share = far_share(points, result.vertices_input, scan.height)
    if share <= MAX_FAR_POINTS or np.median(cKDTree(points).query(result.vertices_input, k=1)[0]) > ON_SCAN_SHARE * scan.height:
        return
    unread = "" if result.person_found is not False else " (or a person the detector did not find: lying down? turn the scan upright)"
    raise ScanError(f"{scan.source} looks like two people{unread}: {share:.0%} of the scan lies far from the one body "
                    f"fitted (a second person, or a large object); {TWO_PEOPLE_FIX}")  # fmt: skip
