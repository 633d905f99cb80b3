"""Which way the person on a scan stands: a lying or upside-down person read from their landmarks.

MediaPipe Pose finds people turned in the image plane, so views about a scan's (wrong) up axis still find a person
who lies along it or stands on their head, with their head and feet where they are: the triangulated landmarks
then point from the feet to the head along another axis (`body_axis`), and a quarter or half turn stands the
person up (`standing_turn`). Where no view finds the person, the other axes a person could stand along are tried
(`search_standing_turn`).
"""

from __future__ import annotations

import numpy as np

from .detect import INDEX, Landmarks, find_landmarks

# (head end, feet end) landmark groups whose midpoints give the body's long axis: the torso, else the legs (which
# bend when sitting or crouching).
AXIS_SEGMENTS = (
    (("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")),
    (("left_hip", "right_hip"), ("left_ankle", "right_ankle")),
    (("left_hip", "right_hip"), ("left_knee", "right_knee")),
)
# The person stands when the feet-to-head axis lies within 45 degrees of up: a leaning or crouching person does.
UPRIGHT_COSINE = np.cos(np.radians(45))
# An axis a person might stand along spans at least this share of the scan's largest extent (arms spread as
# wide as the person is tall, a crouch): shorter axes are not tried.
STANDING_EXTENT_SHARE = 0.6
# (3, 3) rotations that take each coordinate direction (the person's feet-to-head) to +Z: quarter turns about X
# or Y, and half a turn about X for -Z (a person on their head).
TURNS_TO_UP = {
    "+z": np.eye(3),
    "-z": np.diag([1.0, -1.0, -1.0]),
    "+x": np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]),
    "-x": np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),
    "+y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "-y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
}


def axis_name(direction: np.ndarray) -> str:
    """The coordinate direction nearest a vector (3,): "+x", "-z", ..."""
    k = int(np.abs(direction).argmax())
    return ("+" if direction[k] >= 0 else "-") + "xyz"[k]


def body_axis(person: Landmarks) -> np.ndarray | None:
    """(3,) unit vector from the person's feet towards their head, in the landmarks' frame, along the first
    segment of AXIS_SEGMENTS located; None when none was."""
    for head_end, feet_end in AXIS_SEGMENTS:
        ids = [INDEX[name] for name in head_end + feet_end]
        if person.confidence[ids].min() > 0 and np.isfinite(person.points[ids]).all():
            axis = person.points[ids[:2]].mean(0) - person.points[ids[2:]].mean(0)
            length = np.linalg.norm(axis)
            if length > 0:
                return axis / length
    return None


def is_upright(person: Landmarks) -> bool | None:
    """Whether the located person stands along +Z (None: too little located to tell)."""
    axis = body_axis(person)
    return None if axis is None else bool(axis[2] >= UPRIGHT_COSINE)


def standing_turn(person: Landmarks) -> np.ndarray | None:
    """(3, 3) the quarter or half turn that stands the located person up along +Z (the identity when they stand);
    None when too little was located to tell."""
    axis = body_axis(person)
    return None if axis is None else TURNS_TO_UP[axis_name(axis)]


def search_standing_turn(points: np.ndarray) -> np.ndarray | None:
    """For points (N, 3) on which no view about +Z found the person: the first turn (3, 3) (of the directions along
    which the points span enough to be a person's height, longest first) after which the detector finds the
    person standing; None when none does."""
    extent = np.ptp(points, axis=0)
    tried = sorted((name for name in TURNS_TO_UP if name != "+z"), key=lambda name: -extent["xyz".index(name[1])])
    for name in tried:
        if extent["xyz".index(name[1])] < STANDING_EXTENT_SHARE * extent.max():
            continue
        turn = TURNS_TO_UP[name]
        person = find_landmarks(points @ turn.T)
        if person.found and is_upright(person):
            return turn
    return None
