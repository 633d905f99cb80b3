"""The person detector's landmarks on a body model, and as targets for its fit.

Each landmark is a sparse blend of the model's posed vertices, learned once from synthetic renders of that model
(`lvd_core.landmarks.learn`) and shipped beside its data (weights/<model>/<model>-landmarks.npz). A model without
one falls back to its own keypoint regressor (`BodyModel.landmark_regressor`), trusted less where the detector
places a point otherwise.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..fit import LandmarkTargets
from ..resources import weights_dir
from .detect import INDEX

# The detector's landmarks a body fit uses (MediaPipe's names): the COCO keypoints, heels and toe tips.
LEARNED_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
MODEL_NAMES = {"left_foot_index": "left_big_toe", "right_foot_index": "right_big_toe"}  # the model keypoint's name
LANDMARK_FILES = {"anny": "anny/anny-landmarks.npz"}
# Each detected landmark weighs this share of the LVD vertices' count times its confidence (0-1), under a
# Huber loss of this scale (metres, model frame): strong enough to pull a limb the network misplaced.
LANDMARK_WEIGHT = 0.01  # at 0.03 the face points pulled the sample scan's age from 16 to 56 years (truth 21)
LANDMARK_HUBER = 0.02
# Less confident detections are left out: they miss by 20-40 cm at the 90th percentile (held-out synthetic
# bodies, weights/anny/anny-landmarks.json), the confident ones by 4-11 cm.
LANDMARK_MIN_CONFIDENCE = 0.5
# The model's own regressor places some points otherwise than the detector (on Anny: its knees, ankles and heels
# 2-3 cm lower, its ears 3-4 cm farther out, its toe tip ahead of the detector's): without a learned regressor, the
# hips, toes and face points weigh less and every landmark little (at 0.01 the real sample scan's fit moved off its
# surface: median 14.3 -> 16.2 mm).
FALLBACK_WEIGHT = 0.003
FALLBACK_TRUST = {"left_hip": 0.3, "right_hip": 0.3, "left_foot_index": 0.5, "right_foot_index": 0.5, "nose": 0.5,
                  "left_eye": 0.5, "right_eye": 0.5, "left_ear": 0.5, "right_ear": 0.5}  # fmt: skip
LANDMARK_VERTICES = 32  # the model regressor's strongest weights kept: within 4 mm of its whole rows on held-out bodies


def landmark_file(body_name: str) -> Path:
    """Where the learned landmarks of a body model live (or are written)."""
    if body_name not in LANDMARK_FILES:
        raise ValueError(f"no learned landmarks for the {body_name} body model; expected one of {sorted(LANDMARK_FILES)}")
    return weights_dir() / LANDMARK_FILES[body_name]


@lru_cache(maxsize=4)
def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """vertex (L, K), weight (L, K) and the names of a learned landmarks file."""
    with np.load(path) as data:
        return data["vertex"], data["weight"], tuple(str(n) for n in data["names"])


def detector_regressor(model) -> tuple[torch.Tensor, list[str]] | None:
    """(L, V) dense weights from the model's posed vertices to the detector's landmarks as learned (rows sum to
    1, some negative: an affine blend; the model's device and dtype) and their names (MediaPipe's, `detect.NAMES`); None when none is shipped."""
    if model.name not in LANDMARK_FILES or not landmark_file(model.name).exists():
        return None
    vertex, weight, names = _load(landmark_file(model.name))
    if vertex.max() >= model.vertex_count:
        raise ValueError(f"{landmark_file(model.name)} indexes vertex {vertex.max()}; the {model.name} model has "
                         f"{model.vertex_count}: rebuild it with `python -m lvd_core.landmarks.learn`")  # fmt: skip
    matrix = torch.zeros(len(names), model.vertex_count, dtype=torch.float64)
    matrix.scatter_add_(1, torch.as_tensor(vertex, dtype=torch.long), torch.as_tensor(weight, dtype=torch.float64))
    return matrix.to(dtype=model.dtype, device=model.device), list(names)


def fit_landmarks(model) -> tuple[torch.Tensor, list[str], np.ndarray, float | None] | None:
    """What a fit matches the detected landmarks with: (L, V) weights (a few dozen vertices each),
    their names (the detector's), their weights per detection confidence (L,) (a share of the LVD vertices'
    count) and their Huber scale (LandmarkTargets.huber); the learned regressor, else the model's own (at the
    vertex rows' loss); None when the model has neither."""
    learned = detector_regressor(model)
    if learned is not None:
        matrix, names = learned
        return matrix, names, np.full(len(names), LANDMARK_WEIGHT), LANDMARK_HUBER
    own = model.landmark_regressor()
    if own is None:
        return None
    spelled = {v: k for k, v in MODEL_NAMES.items()}
    known = [i for i, name in enumerate(own[1]) if spelled.get(name, name) in INDEX]
    names = [spelled.get(own[1][i], own[1][i]) for i in known]
    scale = FALLBACK_WEIGHT * np.array([FALLBACK_TRUST.get(name, 1.0) for name in names])
    return strongest_weights(own[0][known], LANDMARK_VERTICES), names, scale, None


def landmark_targets(model, points: np.ndarray, confidence: np.ndarray, vertex_count: int) -> LandmarkTargets | None:
    """The detected landmarks points (33, 3) (model frame, NaN where unknown) with their confidence (33,) as
    targets for a fit (batch 1) against `vertex_count` LVD vertices; None when the model has no regressor."""
    regressor = fit_landmarks(model)
    if regressor is None:
        return None
    matrix, names, scale, huber = regressor
    rows = np.array([INDEX[name] for name in names])
    targets = points[rows]
    weights = np.where(confidence[rows] >= LANDMARK_MIN_CONFIDENCE, confidence[rows], 0.0) * scale * vertex_count
    weights = np.where(np.isfinite(targets).all(1), weights, 0.0)
    kw = dict(dtype=model.dtype, device=model.device)
    return LandmarkTargets(matrix, torch.as_tensor(np.nan_to_num(targets)[None], **kw), torch.as_tensor(weights[None], **kw), huber)


def strongest_weights(matrix: torch.Tensor, count: int) -> torch.Tensor:
    """(L, V) blend weights keeping each row's `count` largest, rescaled to the row's sum: the fit then poses only
    those vertices for the landmarks (a regressor's rows can spread over hundreds)."""
    top = matrix.topk(min(count, matrix.shape[1]), dim=1)
    kept = torch.zeros_like(matrix).scatter_(1, top.indices, top.values)
    return kept * (matrix.sum(1, keepdim=True) / kept.sum(1, keepdim=True))
