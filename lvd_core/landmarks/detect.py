"""A person's 3D landmarks and facing from MediaPipe Pose on rendered views of a scan.

Each view (`render.View`, orthographic about the up axis Z) gives a landmark's height and one horizontal
coordinate (along the view's image columns). Pose assumes it sees a face, so in views from behind it mirrors
left and right: each view's sides are chosen so that all views agree (`resolve_sides`), the landmarks are
triangulated by weighted least squares over the views, dropping views that disagree (`triangulate`), and the
person's front is read from the 3D points (`facing_direction`), which also fixes which side is the left.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import numpy as np

from ..native_output import silenced
from .render import View, render_views, view_right

# MediaPipe Pose's 33 landmarks (mediapipe.solutions.pose.PoseLandmark order).
NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
INDEX = {name: i for i, name in enumerate(NAMES)}


def other_side(name: str) -> str:
    """A landmark's name on the other side of the body ("left_eye" -> "right_eye"; "nose" stays)."""
    for side, other in (("left_", "right_"), ("right_", "left_")):
        if name.startswith(side):
            return other + name[len(side) :]
    return name


SWAPPED = np.array([INDEX[other_side(n)] for n in NAMES])  # each landmark's index once left and right are exchanged
# Pairs whose sides decide each view's left and right: big, well-separated limbs.
SIDE_PAIRS = [(INDEX[f"left_{p}"], INDEX[f"right_{p}"]) for p in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")]
VIEWS = 8
MIN_VISIBILITY = 0.3  # a view's landmark below this visibility is not used
# A view disagrees with the others on a landmark when its horizontal coordinate misses the triangulated point
# by more than this share of the height (4 cm on a 1.75 m person): it is dropped for that landmark.
MAX_MISS = 0.025
MIN_DETECTED_VIEWS = 3  # fewer views with a person: no landmarks
# A person found in fewer views, or with a less confident shoulder or hip, may be misread (crouching bodies,
# arms over the head): their facing is then only where the search starts.
SURE_VIEWS = 6
SURE_CONFIDENCE = 0.5


@dataclass
class Landmarks:
    """3D landmarks in the frame of the points they came from. points (33, 3) (NaN where unknown), confidence
    (33,) in [0, 1] (0 where unknown); facing (3,): the person's front, horizontal unit vector (NaN if unknown);
    views: how many views found the person; agreeing_views (33,) int: how many views a landmark's point was
    triangulated from (those left after dropping the ones that disagree; 0 where unknown)."""

    points: np.ndarray
    confidence: np.ndarray
    facing: np.ndarray
    views: int
    agreeing_views: np.ndarray = field(default_factory=lambda: np.zeros(len(NAMES), dtype=int))

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.facing).all())

    @property
    def sure(self) -> bool:
        """Found in most views with the shoulders and hips well placed: the facing can be trusted alone."""
        torso = [INDEX[f"{side}_{part}"] for side in ("left", "right") for part in ("shoulder", "hip")]
        return self.found and self.views >= SURE_VIEWS and bool(self.confidence[torso].min() >= SURE_CONFIDENCE)

    @property
    def facing_yaw(self) -> float:
        """Radians about Z that turn a person facing -Y (the trained facing) to this one's facing."""
        return float(np.arctan2(self.facing[0], -self.facing[1]))


_pose = None
_pose_lock = threading.Lock()  # a mediapipe graph runs one image at a time (fits may run in threads)


def _pose_detector():
    """MediaPipe Pose without segmentation (complexity 1: the model inside the wheel), made on first use."""
    global _pose
    if _pose is None:
        with silenced():  # TensorFlow Lite and absl log their set-up on stderr
            import mediapipe as mp  # imported on first use: ~1 s, and only body scans need it

            _pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False)
    return _pose


def detect_image(rgb: np.ndarray) -> np.ndarray | None:
    """MediaPipe Pose on one image (H, W, 3) uint8 RGB: (33, 3) each landmark's pixel column and row and its
    visibility, or None where it finds no person."""
    with _pose_lock, silenced():
        found = _pose_detector().process(np.ascontiguousarray(rgb)).pose_landmarks
    if found is None:
        return None
    height, width = rgb.shape[:2]
    return np.array([(m.x * width, m.y * height, m.visibility) for m in found.landmark])


def detect_views(views: list[View]) -> np.ndarray:
    """(K, 33, 3) per view: each landmark's horizontal coordinate (along the view's image columns) and height in
    the rendered points' frame, and its visibility; NaN rows where the view found no person."""
    out = np.full((len(views), len(NAMES), 3), np.nan)
    for k, view in enumerate(views):
        marks = detect_image(np.repeat(view.image[..., None], 3, axis=2))
        if marks is not None:
            out[k, :, 0], out[k, :, 1] = view.to_world(marks[:, 0], marks[:, 1])
            out[k, :, 2] = marks[:, 2]
    return out


def _solve(rights: np.ndarray, observed: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares for horizontal points seen from views with image directions rights (K, 2):
    observed (..., K, L) horizontal coordinates, weights (..., K, L) -> points (..., L, 2) and the normal
    matrices' smaller eigenvalue (..., L) (near 0: the views do not fix the point)."""
    normal = np.einsum("...kl,ki,kj->...lij", weights, rights, rights)
    rhs = np.einsum("...kl,...kl,ki->...li", weights, observed, rights)
    smallest = np.linalg.eigvalsh(normal)[..., 0]
    regular = normal + 1e-9 * np.eye(2)
    return np.linalg.solve(regular, rhs[..., None])[..., 0], smallest


def resolve_sides(observations: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """observations (K, 33, 3) from `detect_views`, with each view's left and right exchanged where that makes the
    views agree best (the weighted squared misses of SIDE_PAIRS, every assignment tried). The first view with a
    person keeps its labels: which side is the person's left is decided later, from the 3D points."""
    seen = np.flatnonzero(np.isfinite(observations[:, 0, 0]))
    if len(seen) < 2:
        return observations
    rights = np.stack([view_right(y)[:2] for y in yaws[seen]])
    pairs = np.array(SIDE_PAIRS).ravel()
    both = np.stack([observations[seen][:, pairs], observations[seen][:, SWAPPED[pairs]]])  # (2, K, P, 3)
    choices = np.array([(0, *c) for c in itertools.product((0, 1), repeat=len(seen) - 1)])  # (C, K)
    picked = both[choices, np.arange(len(seen))]  # (C, K, P, 3)
    weights = np.where(picked[..., 2] >= MIN_VISIBILITY, picked[..., 2], 0.0)
    points, _ = _solve(rights, picked[..., 0], weights)
    misses = picked[..., 0] - np.einsum("cli,ki->ckl", points, rights)
    best = choices[np.argmin((weights * misses**2).sum((1, 2)))]
    resolved = observations.copy()
    for k, swap in zip(seen, best):
        if swap:
            resolved[k] = observations[k, SWAPPED]
    return resolved


def triangulate(observations: np.ndarray, yaws: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """observations (K, 33, 3) with consistent sides -> points (33, 3), confidence (33,) and agreeing views (33,)
    int. Views missing a landmark (horizontally or in height) by more than MAX_MISS * height are dropped for it,
    the worst first; confidence is the kept views' summed visibility over the views with a person and agreeing
    views their count, both 0 when the kept views cannot fix the point."""
    seen = np.flatnonzero(np.isfinite(observations[:, 0, 0]))
    rights = np.stack([view_right(y)[:2] for y in yaws[seen]])
    horizontal, heights, visibility = np.moveaxis(observations[seen], 2, 0)  # each (K, 33)
    weights = np.where(visibility >= MIN_VISIBILITY, visibility, 0.0)
    mean_height = lambda w: (w * heights).sum(0) / np.maximum(w.sum(0), 1e-9)  # noqa: E731
    for _ in range(len(seen) - 2):  # drop each landmark's worst view while it misses: one wrong view skews all
        points, smallest = _solve(rights, horizontal, weights)
        misses = np.maximum(np.abs(horizontal - rights @ points.T), np.abs(heights - mean_height(weights)))  # (K, 33)
        misses = np.where(weights > 0, misses, 0.0)
        worst = misses.argmax(0)
        wrong = misses[worst, np.arange(len(NAMES))] > MAX_MISS * height
        if not wrong.any():
            break
        weights[worst[wrong], np.flatnonzero(wrong)] = 0.0
    points, smallest = _solve(rights, horizontal, weights)
    kept = weights > 0
    z = mean_height(weights)
    fixed = smallest > 0.1 * weights.sum(0) / 2  # the kept views span enough directions
    confidence = np.where(fixed, weights.sum(0) / len(seen), 0.0)
    agreeing = np.where(fixed, kept.sum(0), 0)
    result = np.concatenate([points, z[:, None]], axis=1)
    result[~fixed | ~kept.any(0)] = np.nan
    return result, confidence, agreeing


def facing_direction(points: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, bool]:
    """The person's front (3,) (horizontal unit vector, NaN when the shoulders and hips are unknown) and whether
    the labelled left side is the person's right (then the labels must be exchanged).

    The shoulders and hips give the left-right axis; the nose ahead of the ears and the toes ahead of the heels
    say which way along its perpendicular is the front."""
    left_right = np.zeros(3)
    for side in ("shoulder", "hip"):
        left, right = INDEX[f"left_{side}"], INDEX[f"right_{side}"]
        weight = min(confidence[left], confidence[right])
        if weight > 0:
            left_right += weight * (points[left] - points[right])
    left_right[2] = 0.0
    if np.linalg.norm(left_right) < 1e-9:
        return np.full(3, np.nan), False
    front = np.cross(left_right, [0.0, 0.0, 1.0])  # a person's left is up x front, so front = left x up
    front /= np.linalg.norm(front)
    vote = 0.0
    for ahead, behind in (("nose", ("left_ear", "right_ear")), ("left_foot_index", ("left_heel",)),
                          ("right_foot_index", ("right_heel",))):  # fmt: skip
        ids = [INDEX[ahead], *(INDEX[b] for b in behind)]
        weight = confidence[ids].min()
        if weight > 0:
            vote += weight * np.dot(points[ids[0]] - points[ids[1:]].mean(0), front)
    mirrored = vote < 0
    return (-front if mirrored else front), mirrored


def find_landmarks(points: np.ndarray, views: int = VIEWS, size: int = 512) -> Landmarks:
    """The person's landmarks and facing from points (N, 3) (Z up, any units) rendered from `views` yaws."""
    yaws = np.arange(views) * 2 * np.pi / views
    observations = detect_views(render_views(points, yaws, size))
    seen = int(np.isfinite(observations[:, 0, 0]).sum())
    unknown = Landmarks(np.full((len(NAMES), 3), np.nan), np.zeros(len(NAMES)), np.full(3, np.nan), seen)
    if seen < MIN_DETECTED_VIEWS:
        return unknown
    height = np.ptp(points[:, 2])
    located, confidence, agreeing = triangulate(resolve_sides(observations, yaws), yaws, height)
    facing, mirrored = facing_direction(located, confidence)
    if mirrored:
        located, confidence, agreeing = located[SWAPPED], confidence[SWAPPED], agreeing[SWAPPED]
    return Landmarks(located, confidence, facing, seen, agreeing)
