"""What a fitted body is, in words a user checks at a glance: its phenotypes (Anny), age in years, height and
chest, waist and hip circumferences in metres, measured on the rest pose (standing, arms down) as a tailor would.

Circumferences are a tape around a horizontal cut of the rest mesh at a landmark height (the convex hull of the
torso's section: the tape bridges hollows), the arms left out:
- chest: Anny's upper spine joint (spine01), about the armpits;
- waist: the mean height of anny's own waist-line vertices;
- hip: midway between the upper-leg bones' two heads, about the widest part of the buttocks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .body.base import BodyModel, BodyParams

UP_INDEX = {"y": 1, "z": 2}
TORSO_PARTS = ("torso", "thigh")  # the parts a circumference's cut keeps (not the arms and hands hanging beside it)


def rest_body(body: BodyModel, params: BodyParams) -> np.ndarray:
    """(B, V, 3) the fitted bodies standing in the rest pose, scaled, metres."""
    with torch.no_grad():
        return (body.rest_vertices(params.shape) * params.scale[:, None]).detach().cpu().double().numpy()


def body_height(body: BodyModel, params: BodyParams) -> np.ndarray:
    """(B,) metres: each fitted body's height standing in the rest pose."""
    return np.ptp(rest_body(body, params)[..., UP_INDEX[body.up_axis]], axis=1)


def landmark_heights(body: BodyModel, params: BodyParams) -> dict[str, np.ndarray] | None:
    """{"chest", "waist", "hip"}: (B,) heights in the rest pose (model frame, metres) where the circumferences
    are taken, or None for a body without Anny's landmarks (SMPL, a hand)."""
    names = body.joint_names
    if not {"spine01", "upperleg01.L", "upperleg02.L"} <= set(names) or not hasattr(body, "anny"):
        return None
    from anny.anthropometry import Anthropometry

    up = UP_INDEX[body.up_axis]
    with torch.no_grad():
        joints = (body.rest_joints(params.shape) * params.scale[:, None]).cpu().double().numpy()[..., up]
    waist_line = Anthropometry(body.anny).waist_vertex_indices
    hips = [names.index(n) for n in ("upperleg01.L", "upperleg02.L", "upperleg01.R", "upperleg02.R")]
    return {
        "chest": joints[:, names.index("spine01")],
        "waist": rest_body(body, params)[:, waist_line, up].mean(1),
        "hip": joints[:, hips].mean(1),
    }


def circumference(vertices: np.ndarray, faces: np.ndarray, keep_faces: np.ndarray, up: int, height: float) -> float:
    """Metres of tape around the horizontal cut at `height` of the mesh vertices (V, 3), faces (F, 3), through
    the faces `keep_faces` (F,) bool only: the perimeter of the cut points' convex hull (0 when nothing is cut)."""
    from scipy.spatial import ConvexHull

    corners = vertices[faces[keep_faces]]  # (F, 3, 3)
    above = corners[..., up] > height
    crossing = above.any(1) & ~above.all(1)
    points = []
    for a, b in ((0, 1), (1, 2), (2, 0)):  # each edge that the plane crosses gives a point of the section
        start, end = corners[crossing, a], corners[crossing, b]
        cut = above[crossing, a] != above[crossing, b]
        t = (height - start[cut, up]) / (end[cut, up] - start[cut, up])
        points.append(start[cut] + t[:, None] * (end[cut] - start[cut]))
    section = np.delete(np.concatenate(points), up, axis=1)
    if len(section) < 3:
        return 0.0
    return float(ConvexHull(section).area)  # a 2-D hull's "area" is its perimeter


def body_measurements(body: BodyModel, params: BodyParams) -> dict[str, np.ndarray]:
    """{"height_m", and for Anny bodies "chest_m", "waist_m", "hip_m"}: (B,) metres of each fitted body."""
    out = {"height_m": body_height(body, params)}
    heights = landmark_heights(body, params)
    if heights is None:
        return out
    from .synth.surface import body_surface

    surface = body_surface(body)
    torso_faces = surface.part_mask(*TORSO_PARTS)[surface.faces].all(1)
    rest = rest_body(body, params)
    up = UP_INDEX[body.up_axis]
    for name, level in heights.items():
        out[f"{name}_m"] = np.array([circumference(rest[b], surface.faces, torso_faces, up, level[b]) for b in range(len(rest))])
    return out


def age_in_years(body: BodyModel, shape: Tensor) -> np.ndarray:
    """(B,) the morphological age in years of Anny phenotypes (B, S) (anny's calibrated age mapping)."""
    from .synth.shapes import anny_distribution

    mapping = anny_distribution(body, children=False).morphological_age_mapping
    age = shape[:, body.shape_names.index("age")].to(dtype=mapping.anny_age_anchors.dtype)
    return mapping.anny_to_morphological_age(age).detach().cpu().numpy()


def readable_phenotypes(body: BodyModel, params: BodyParams) -> list[dict[str, float]]:
    """Per fitted body (batch item), what it is, for the result's .json and summaries: Anny's phenotypes in
    [0, 1] (gender 0 male .. 1 female, age, muscle, weight, height, proportions) and "age_years", then
    `body_measurements` (height, and for Anny chest, waist and hip circumferences, metres). SMPL / MANO:
    the height only (their betas mean nothing to a reader)."""
    readable = {name: values for name, values in body_measurements(body, params).items()}
    if body.shape_bounds and "age" in body.shape_names:
        shape = params.shape.detach().cpu()
        readable = {name: shape[:, k].double().numpy() for k, name in enumerate(body.shape_names)} | {
            "age_years": age_in_years(body, shape)
        } | readable
    return [{name: round(float(values[b]), 4) for name, values in readable.items()} for b in range(params.batch_size)]


def fit_description(body: BodyModel, params: BodyParams, real_size: bool) -> dict[str, float]:
    """readable_phenotypes of one fitted body (batch 1); without the sizes (metres) when the fit does not know
    the person's real size (unitless scans, photos): they would be those of a body scaled to the model's height.
    Hands: nothing."""
    if body.kind == "hand":  # a hand's phenotypes and length say little about the person
        return {}
    readable = readable_phenotypes(body, params)[0]
    return readable if real_size else {name: value for name, value in readable.items() if not name.endswith("_m")}


def describe(description: dict[str, float]) -> str:
    """One line a user checks at a glance (a man who came out as a woman, a child's proportions), e.g.
    "male-looking (gender 0.12), 34 years, weight 0.55, 1.81 m tall"."""
    parts = []
    if "gender" in description:
        gender = description["gender"]
        look = "male-looking" if gender < 0.35 else "female-looking" if gender > 0.65 else "between male and female"
        parts.append(f"{look} (gender {gender:.2f})")
    if "age_years" in description:
        parts.append(f"{description['age_years']:.0f} years")
    if "weight" in description:
        parts.append(f"weight {description['weight']:.2f}")
    if "height_m" in description:
        parts.append(f"{description['height_m']:.2f} m tall")
    return ", ".join(parts)
