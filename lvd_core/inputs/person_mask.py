"""Automatic person mask and pose landmarks from a photo, offline, with mediapipe's legacy Pose solution.

mediapipe is imported only when a mask is needed (it takes about a second to import). Pose complexity 1
("full") is the only one whose model ships inside the 0.10.21 wheel; 0 and 2 try to download theirs.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..native_output import silenced
from .image import ImageInputError, load_image

SEGMENTATION_THRESHOLD = 0.5
# Another mask region at least this fraction of the largest one is probably another person, not a stray blob.
OTHER_PERSON_AREA_FRACTION = 0.2
POSE_LANDMARK_COUNT = 33

_pose = None
_pose_lock = threading.Lock()  # mediapipe graphs are not safe to run from two threads at once


class NoPersonError(ImageInputError):
    """The photo shows no person that mediapipe can find."""


@dataclass(frozen=True)
class PersonDetection:
    mask: np.ndarray  # (H, W) float32, 1 on the person (one connected region), 0 elsewhere
    landmarks_2d: np.ndarray | None  # (33, 3) mediapipe pose landmarks: x, y in photo pixels, visibility in [0, 1]
    landmarks_3d: np.ndarray | None  # (33, 3) x, y, z in metres, origin between the hips (mediapipe world frame)


def find_person(rgb: np.ndarray, name: str = "the image") -> PersonDetection:
    """The person's mask and pose landmarks in an (H, W, 3) uint8 RGB photo; `name` is used in errors."""
    rgb = load_image(rgb)  # validates shape, dtype and size
    pose = _pose_model()
    with _pose_lock, silenced():  # TensorFlow Lite and absl log their set-up on stderr
        result = pose.process(rgb)
    if result.pose_landmarks is None or result.segmentation_mask is None:
        raise _no_person(name, "mediapipe found no body pose")
    binary = result.segmentation_mask >= SEGMENTATION_THRESHOLD
    if not binary.any():
        raise _no_person(name, "the person mask is empty")
    height, width = rgb.shape[:2]
    return PersonDetection(
        mask=_largest_region(binary, name).astype(np.float32),
        landmarks_2d=_landmark_array(result.pose_landmarks, scale=(width, height, 1.0), last="visibility"),
        landmarks_3d=_landmark_array(result.pose_world_landmarks, scale=(1.0, 1.0, 1.0), last="z"),
    )


def _pose_model():
    global _pose
    with _pose_lock:
        if _pose is None:
            with silenced():
                import mediapipe as mp  # slow import: only when a mask is needed

                _pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True)
        return _pose


def _no_person(name: str | Path, why: str) -> NoPersonError:
    return NoPersonError(
        f"no person found in {name}: {why}; give a photo with one person fully visible, or pass a mask"
    )


def _largest_region(binary: np.ndarray, name: str) -> np.ndarray:
    """Keeps the largest connected region; warns when other large regions (other people?) are dropped."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    largest = int(np.argmax(areas))
    others = int(np.sum(areas >= OTHER_PERSON_AREA_FRACTION * areas[largest])) - 1
    if others > 0:
        warnings.warn(
            f"several people? {name}: kept the largest person region of {others + 1}; "
            "pass a mask to choose another person",
            stacklevel=3,
        )
    return labels == largest + 1


def _landmark_array(landmarks, scale: tuple[float, float, float], last: str) -> np.ndarray | None:
    """mediapipe landmark list -> (33, 3) array of x, y and `last` ("visibility" or "z"), times `scale`."""
    if landmarks is None:
        return None
    values = np.array([(point.x, point.y, getattr(point, last)) for point in landmarks.landmark], dtype=np.float32)
    return values * np.asarray(scale, dtype=np.float32)
