"""Random body and hand poses in named families, within anatomical joint limits.

Poses are written in anatomical angles (degrees) per abstract joint (hip, knee, shoulder, finger ...) and side:
(flex, abduct, twist). Each abstract joint has three rotation axes derived once from the model's rest skeleton:
flex moves the segment towards a direction (forward for the hip and shoulder, backward for the knee, the palm
for fingers), abduct towards another (outward, or up for the shoulder), twist turns about the segment. The
joint's axis-angle is the angle-weighted sum of the axes. Axes built from cross products with mirrored
directions make the right side the mirror image of the left, so one angle table serves both sides.

Angles are *anatomical* (measured from a straight, hanging body): the model's rest pose (Anny's A-pose with bent
elbows, SMPL's T-pose) is subtracted, so families and limits mean the same on every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .surface import FORWARD_VECTORS, UP_VECTORS, is_hand

# Anatomical limits (degrees): (flex, abduct, twist) each (low, high). Sums over a joint's model bones.
JOINT_LIMITS = {
    "hip": ((-30, 130), (-30, 60), (-40, 40)),
    "knee": ((0, 150), (0, 0), (-10, 10)),
    "ankle": ((-45, 30), (-20, 20), (-15, 15)),
    "spine": ((-30, 80), (-35, 35), (-45, 45)),
    "neck": ((-50, 60), (-40, 40), (-70, 70)),
    "clavicle": ((-15, 20), (-10, 30), (0, 0)),
    "shoulder": ((-60, 170), (-20, 180), (-90, 90)),
    "elbow": ((0, 150), (0, 0), (-80, 80)),
    "wrist": ((-70, 80), (-20, 30), (0, 0)),
    "finger1": ((-10, 90), (-20, 20), (0, 0)),  # knuckle (for the thumb its base joint)
    "finger2": ((0, 110), (0, 0), (0, 0)),
    "finger3": ((0, 80), (0, 0), (0, 0)),
}
BODY_FAMILIES = (
    "standing", "a_pose", "t_pose", "walking", "running", "arms_raised", "arms_crossed", "sitting", "crouching",
    "leaning", "random",
)  # fmt: skip
# Poses users bring that random bodies rarely take: drawn only when asked for by name (BodySampling.families,
# sample_pose), so the default mix (and the held-out sets drawn from it) stays as it was.
EXTRA_BODY_FAMILIES = ("arms_front", "hands_on_hips", "hands_in_pockets", "knee_raised")
HAND_FAMILIES = ("open", "relaxed", "pointing", "fist", "grasp_cylinder", "grasp_sphere", "random")

# ---------------------------------------------------------------------------------------------------------
# Rigs: abstract joints -> model bones (left side; the right side's names follow from SIDE_NAMES).

ANNY_BODY_BONES = {
    "hip": ["upperleg01.L"], "knee": ["lowerleg01.L"], "ankle": ["foot.L"],
    "spine": ["spine05", "spine04", "spine03", "spine02", "spine01"], "neck": ["neck01", "neck02", "neck03", "head"],
    "clavicle": ["clavicle.L"], "shoulder": ["upperarm01.L"], "elbow": ["lowerarm01.L"], "wrist": ["wrist.L"],
}  # fmt: skip
SMPL_BODY_BONES = {
    "hip": ["left_hip"], "knee": ["left_knee"], "ankle": ["left_ankle"], "spine": ["spine1", "spine2", "spine3"],
    "neck": ["neck", "head"], "clavicle": ["left_collar"], "shoulder": ["left_shoulder"], "elbow": ["left_elbow"],
    "wrist": ["left_wrist"],
}  # fmt: skip
# Segment ends: the bone whose rest head ends each abstract joint's segment (its "child"), per rig.
ANNY_SEGMENT_ENDS = {"hip": "lowerleg01.L", "knee": "foot.L", "shoulder": "lowerarm01.L", "elbow": "wrist.L",
                     "wrist": "finger3-1.L"}  # fmt: skip
SMPL_SEGMENT_ENDS = {"hip": "left_knee", "knee": "left_ankle", "shoulder": "left_elbow", "elbow": "left_wrist",
                     "wrist": "left_hand"}  # fmt: skip
FINGERS = ("thumb", "index", "middle", "ring", "little")
ANNY_FINGER_BONES = {f: [f"finger{k}-{s}" for s in (1, 2, 3)] for k, f in enumerate(FINGERS, 1)}
MANO_FINGER_BONES = {f: [f"{'pinky' if f == 'little' else f}{s}" for s in (1, 2, 3)] for f in FINGERS}
SIDE_NAMES = ((".L", ".R"), ("left_", "right_"))


@dataclass(frozen=True)
class RigJoint:
    """One model bone driven by an abstract joint. axes (3, 3) rows: flex, abduct, twist axis (unit, model
    frame); share: the fraction of the abstract joint's angles it takes; rest (3,) the rest pose's anatomical
    angles (subtracted); side: "L", "R" or "" (central)."""

    bone: int
    abstract: str
    side: str
    axes: np.ndarray
    share: float
    rest: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(_unit(a) @ _unit(b), -1.0, 1.0))))


def _mirror_name(name: str) -> str:
    for left, right in SIDE_NAMES:
        name = name.replace(left, right)
    return name


@lru_cache(maxsize=8)
def body_rig(body) -> tuple[RigJoint, ...]:
    """The abstract joints of `body` with their axes, from the rest skeleton of the neutral shape."""
    with torch.no_grad():
        rest = body(body.zero_params(1)).joints[0].double().cpu().numpy()
    index = {name: j for j, name in enumerate(body.joint_names)}
    up, fwd = np.array(UP_VECTORS[body.up_axis]), np.array(FORWARD_VECTORS[body.up_axis])
    if is_hand(body):
        return tuple(_hand_rig(body, rest, index, fwd))
    anny = "upperleg01.L" in index
    bones, ends = (ANNY_BODY_BONES, ANNY_SEGMENT_ENDS) if anny else (SMPL_BODY_BONES, SMPL_SEGMENT_ENDS)
    rig: list[RigJoint] = []
    for side, sign, rename in (("L", 1.0, str), ("R", -1.0, _mirror_name)):
        outward = np.array([sign, 0.0, 0.0])  # .L / left_ is +X on every model we load
        pos = lambda name: rest[index[rename(name)]]  # noqa: E731
        seg = {a: pos(ends[a]) - pos(bones[a][0]) for a in ends}
        axes = {
            "hip": (np.cross(seg["hip"], fwd), np.cross(seg["hip"], outward), sign * seg["hip"]),
            "knee": (np.cross(seg["hip"], -fwd), np.zeros(3), sign * seg["knee"]),
            "ankle": (np.cross(fwd, up), np.cross(fwd, outward), sign * fwd),
            "clavicle": (np.cross(outward, fwd), np.cross(outward, up), np.zeros(3)),
            "shoulder": (np.cross(seg["shoulder"], fwd), np.cross(seg["shoulder"], up), sign * seg["shoulder"]),
            "elbow": (np.cross(seg["shoulder"], fwd), np.zeros(3), sign * seg["elbow"]),
            "wrist": (np.cross(seg["wrist"], -outward), np.cross(seg["wrist"], fwd), np.zeros(3)),
        }
        rests = {
            "shoulder": (0.0, _angle_deg(seg["shoulder"], -up), 0.0),
            "elbow": (_angle_deg(seg["shoulder"], seg["elbow"]), 0.0, 0.0),
            "knee": (_angle_deg(seg["hip"], seg["knee"]), 0.0, 0.0),
        }
        for abstract, vectors in axes.items():
            frame = np.stack([_unit(v) if np.linalg.norm(v) > 0 else v for v in vectors])
            for name in bones[abstract]:
                rest_angles = np.array(rests.get(abstract, (0.0, 0.0, 0.0)))
                rig.append(RigJoint(index[rename(name)], abstract, side, frame, 1.0, rest_angles))
        if anny:
            rig += _hand_rig(body, rest, index, fwd, side=side)
    central = np.stack([_unit(np.cross(up, fwd)), _unit(np.cross(up, np.array([1.0, 0, 0]))), up])
    for abstract in ("spine", "neck"):
        for name in bones[abstract]:
            share = 1.0 / len(bones[abstract])
            rig.append(RigJoint(index[name], abstract, "", central, share, np.zeros(3)))
    return tuple(rig)


def _hand_rig(body, rest: np.ndarray, index: dict, fwd: np.ndarray, side: str | None = None) -> list[RigJoint]:
    """Finger joints: flex towards the palm (about the axis across the finger), abduct about the palm normal."""
    anny = any(name.startswith("finger") for name in index)
    bones = ANNY_FINGER_BONES if anny else MANO_FINGER_BONES
    suffix = {"L": ".L", "R": ".R"}.get(side, "")
    if side is None:  # a hand-only model: the side from its name (MANO without a side is a right hand)
        side = "L" if body.name.endswith("left") else "R"
        suffix = next((s for s in (".L", ".R") if any(n.endswith(s) for n in index)), "")
    sign = 1.0 if side == "L" else -1.0
    pos = lambda name: rest[index[name + suffix]]  # noqa: E731
    wrist = rest[index["wrist" + suffix]]
    # Palm normal, out of the palm (flexion curls towards it): (index - wrist) x (little - wrist) points out of
    # the palm of a right hand and out of the back of a left one (mirrored), hence -sign.
    normal = _unit(np.cross(pos(bones["index"][0]) - wrist, pos(bones["little"][0]) - wrist)) * -sign
    rig = []
    for finger, names in bones.items():
        for k, name in enumerate(names):
            end = pos(names[k + 1]) if k + 1 < len(names) else 2 * pos(name) - pos(names[k - 1])
            direction = _unit(end - pos(name))
            frame = np.stack([_unit(np.cross(direction, normal)), normal * sign, np.zeros(3)])
            rig.append(RigJoint(index[name + suffix], f"finger{k + 1}", side, frame, 1.0, np.zeros(3)))
    return rig


# ---------------------------------------------------------------------------------------------------------
# Families: anatomical angle ranges (degrees) per abstract joint, (flex, abduct, twist) each (low, high).

_BODY_BASE = {
    "hip": ((-5, 5), (0, 8), (-10, 10)), "knee": ((0, 8), (0, 0), (0, 0)), "ankle": ((-5, 5), (-3, 3), (-5, 5)),
    "spine": ((-5, 8), (-5, 5), (-8, 8)), "neck": ((-10, 15), (-8, 8), (-20, 20)), "clavicle": ((-3, 3), (-3, 5), (0, 0)),
    "shoulder": ((-10, 15), (5, 20), (-20, 20)), "elbow": ((5, 25), (0, 0), (-20, 40)), "wrist": ((-10, 15), (-5, 10), (0, 0)),
}  # fmt: skip
_BODY_FAMILY_CHANGES = {
    "standing": {},
    "a_pose": {"shoulder": ((-5, 5), (35, 55), (-10, 10)), "elbow": ((0, 15), (0, 0), (-10, 30))},
    "t_pose": {"shoulder": ((-5, 5), (82, 98), (-10, 10)), "elbow": ((0, 10), (0, 0), (-10, 30))},
    "walking": {"knee": ((5, 30), (0, 0), (0, 0)), "elbow": ((10, 40), (0, 0), (0, 40))},
    "running": {"knee": ((20, 100), (0, 0), (0, 0)), "elbow": ((70, 110), (0, 0), (0, 40)),
                "spine": ((5, 15), (-5, 5), (-10, 10))},
    "arms_raised": {"shoulder": ((-10, 30), (130, 175), (-20, 20)), "elbow": ((0, 40), (0, 0), (-20, 40))},
    "arms_crossed": {"shoulder": ((20, 45), (5, 20), (45, 70)), "elbow": ((110, 135), (0, 0), (20, 60)),
                     "wrist": ((-10, 10), (0, 0), (0, 0))},
    "sitting": {"hip": ((75, 100), (0, 15), (-10, 10)), "knee": ((75, 105), (0, 0), (0, 0)),
                "shoulder": ((15, 40), (5, 15), (-20, 10)), "elbow": ((30, 70), (0, 0), (0, 60))},
    "crouching": {"hip": ((100, 125), (10, 30), (-15, 15)), "knee": ((115, 145), (0, 0), (0, 0)),
                  "ankle": ((15, 30), (-5, 5), (-5, 5)), "spine": ((20, 45), (-5, 5), (-10, 10)),
                  "shoulder": ((30, 70), (5, 20), (-20, 20)), "elbow": ((20, 70), (0, 0), (0, 60))},
    "leaning": {"spine": ((-10, 30), (-25, 25), (-25, 25)), "hip": ((-5, 15), (0, 10), (-10, 10))},
    # Forearms forward at waist to chest height, hands a shoulder-width apart (holding a box or a phone).
    "arms_front": {"shoulder": ((25, 60), (0, 12), (-20, 0)), "elbow": ((50, 95), (0, 0), (0, 30)),
                   "wrist": ((-10, 10), (0, 0), (0, 0))},
    # Elbows out and back, the forearm turned in so the hand rests on the hip.
    "hands_on_hips": {"shoulder": ((-20, -5), (30, 45), (60, 85)), "elbow": ((85, 110), (0, 0), (0, 20))},
    "hands_in_pockets": {"shoulder": ((0, 10), (5, 12), (30, 50)), "elbow": ((25, 45), (0, 0), (0, 30)),
                         "wrist": ((-20, 0), (0, 10), (0, 0))},
    "knee_raised": {},  # one leg: _ONE_SIDED
}  # fmt: skip
# Families that bend one side only (drawn at random per body): the other side keeps the family's ranges.
_ONE_SIDED = {"knee_raised": {"hip": ((60, 100), (0, 15), (-10, 10)), "knee": ((70, 110), (0, 0), (0, 0)),
                              "ankle": ((-10, 20), (-5, 5), (-5, 5))}}  # fmt: skip
# Walking and running couple the sides: the legs swing in opposition and each arm against its leg.
_GAIT_SWING = {"walking": (10, 30), "running": (25, 55)}
_HAND_FAMILIES = {
    "open": {"finger1": ((-10, 5), (5, 20), (0, 0)), "finger2": ((0, 8), (0, 0), (0, 0)), "finger3": ((0, 8), (0, 0), (0, 0))},
    "relaxed": {"finger1": ((10, 30), (-5, 10), (0, 0)), "finger2": ((15, 40), (0, 0), (0, 0)), "finger3": ((10, 30), (0, 0), (0, 0))},
    "fist": {"finger1": ((70, 90), (-10, 0), (0, 0)), "finger2": ((90, 110), (0, 0), (0, 0)), "finger3": ((50, 75), (0, 0), (0, 0))},
    "grasp_cylinder": {"finger1": ((35, 60), (-5, 5), (0, 0)), "finger2": ((50, 75), (0, 0), (0, 0)), "finger3": ((30, 55), (0, 0), (0, 0))},
    "grasp_sphere": {"finger1": ((25, 45), (5, 15), (0, 0)), "finger2": ((30, 50), (0, 0), (0, 0)), "finger3": ((20, 40), (0, 0), (0, 0))},
}  # fmt: skip


def _uniform(rng: np.random.Generator, ranges, n: int) -> np.ndarray:
    """ranges ((lo, hi) x 3) -> (n, 3) uniform angles."""
    lo, hi = np.array(ranges, dtype=np.float64).T
    return rng.uniform(lo, hi, size=(n, 3))


def _within_limits(rng: np.random.Generator, abstract: str, n: int) -> np.ndarray:
    """(n, 3): normal around the middle of the limits, a quarter of the range wide, clipped to the limits
    (uniform over the whole range would make most poses extreme)."""
    lo, hi = np.array(JOINT_LIMITS[abstract], dtype=np.float64).T
    return rng.normal((lo + hi) / 2, (hi - lo) / 4, size=(n, 3))


def family_angles(family: str, abstracts: set[str], rng: np.random.Generator, n: int) -> dict[tuple[str, str], np.ndarray]:
    """Anatomical angles {(abstract joint, side): (n, 3) degrees}, clipped to JOINT_LIMITS. Fingers of a body
    are relaxed; body families apply to bodies, hand families to hands."""
    sides = ("L", "R")
    angles: dict[tuple[str, str], np.ndarray] = {}
    hand_family = family if family in _HAND_FAMILIES or family in ("pointing", "random") else "relaxed"
    for abstract in sorted(abstracts):
        for side in ("",) if abstract in ("spine", "neck") else sides:
            if abstract.startswith("finger"):
                angles[(abstract, side)] = _finger_angles(hand_family, abstract, rng, n)
            elif family == "random":
                angles[(abstract, side)] = _within_limits(rng, abstract, n)
            else:
                ranges = _BODY_FAMILY_CHANGES[family].get(abstract, _BODY_BASE[abstract])
                angles[(abstract, side)] = _uniform(rng, ranges, n)
    if family in _ONE_SIDED:
        raised = rng.choice(sides, size=n)
        for abstract, ranges in _ONE_SIDED[family].items():
            for side in sides:
                if (abstract, side) in angles:
                    chosen = raised == side
                    angles[(abstract, side)][chosen] = _uniform(rng, ranges, int(chosen.sum()))
    if family in _GAIT_SWING and "hip" in abstracts:
        swing = rng.uniform(*_GAIT_SWING[family], size=n) * rng.choice([-1.0, 1.0], size=n)
        for side, phase in (("L", 1.0), ("R", -1.0)):
            angles[("hip", side)][:, 0] += phase * swing
            angles[("shoulder", side)][:, 0] -= phase * swing * 0.8
    return {key: _clip(key[0], value) for key, value in angles.items()}


def _finger_angles(family: str, abstract: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 5, 3) finger angles (thumb, index, middle, ring, little) of one segment level."""
    if family == "random":
        return np.stack([_within_limits(rng, abstract, n) for _ in FINGERS], axis=1)
    if family == "pointing":  # a fist with the index finger straight
        fist = np.stack([_uniform(rng, _HAND_FAMILIES["fist"][abstract], n) for _ in FINGERS], axis=1)
        fist[:, 1] = _uniform(rng, _HAND_FAMILIES["open"][abstract], n)
        return fist
    return _fan_out(np.stack([_uniform(rng, _HAND_FAMILIES[family][abstract], n) for _ in FINGERS], axis=1))


def _fan_out(per_finger: np.ndarray) -> np.ndarray:
    """(n, 5, 3) finger angles with their spread fanned: index towards the thumb, ring and little away from it."""
    per_finger[:, :, 1] *= np.array([1.0, 0.5, 0.0, -0.5, -1.0])[None]
    return per_finger


def relaxed_finger_pose(body) -> np.ndarray:
    """joint_pose (J-1, 3) float32 with every finger at the middle of the "relaxed" family (the curl of a hand
    at rest, and of the synthetic bodies' hands) and every other joint at rest; all zero without fingers."""
    abstracts = {joint.abstract for joint in body_rig(body)}
    angles = {}
    for abstract in sorted(a for a in abstracts if a.startswith("finger")):
        middle = np.mean(_HAND_FAMILIES["relaxed"][abstract], axis=1)  # (3,) the middle of each range
        for side in ("L", "R", ""):
            angles[(abstract, side)] = _clip(abstract, _fan_out(np.tile(middle, (1, len(FINGERS), 1))))
    return angles_to_joint_pose(body, angles, 1)[0]


def _clip(abstract: str, angles: np.ndarray) -> np.ndarray:
    lo, hi = np.array(JOINT_LIMITS[abstract], dtype=np.float64).T
    return np.clip(angles, lo, hi)


# ---------------------------------------------------------------------------------------------------------


def angles_to_joint_pose(body, angles: dict[tuple[str, str], np.ndarray], n: int) -> np.ndarray:
    """Anatomical angles {(abstract, side): (n, 3) or (n, 5, 3) for fingers} -> joint_pose (n, J-1, 3) float32."""
    pose = np.zeros((n, body.joint_count, 3))
    finger_order = {}
    for joint in body_rig(body):
        value = angles.get((joint.abstract, joint.side))
        if value is None:
            continue
        if value.ndim == 3:  # fingers: the k-th rig joint of this level and side is finger k
            k = finger_order.setdefault((joint.abstract, joint.side), [0])
            value = value[:, k[0]]
            k[0] += 1
        delta = np.radians(value - joint.rest) * joint.share
        pose[:, joint.bone] += delta @ joint.axes
    return pose[:, 1:].astype(np.float32)


def joint_pose_to_angles(body, joint_pose: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """The inverse of `angles_to_joint_pose` for the abstract joints (summed over their bones; fingers (n, 5, 3)),
    used to check limits. joint_pose (n, J-1, 3)."""
    full = np.concatenate([np.zeros((len(joint_pose), 1, 3)), joint_pose], axis=1).astype(np.float64)
    out: dict[tuple[str, str], list] = {}
    for joint in body_rig(body):
        used = np.linalg.norm(joint.axes, axis=1) > 0
        solved = np.zeros((len(full), 3))
        solved[:, used] = np.linalg.lstsq(joint.axes[used].T, full[:, joint.bone].T, rcond=None)[0].T
        out.setdefault((joint.abstract, joint.side), []).append(np.degrees(solved) + joint.rest * joint.share)
    return {key: (np.stack(v, 1) if key[0].startswith("finger") else np.sum(v, 0)) for key, v in out.items()}


def pose_families(body) -> tuple[str, ...]:
    """The pose families drawn by default for the model's kind: HAND_FAMILIES for hands, BODY_FAMILIES otherwise."""
    return HAND_FAMILIES if is_hand(body) else BODY_FAMILIES


def known_families(body) -> tuple[str, ...]:
    """Every pose family the model's kind can take by name: its default ones and, for bodies, EXTRA_BODY_FAMILIES."""
    return HAND_FAMILIES if is_hand(body) else BODY_FAMILIES + EXTRA_BODY_FAMILIES


def sample_pose(body, rng: np.random.Generator, n: int, family: str | None = None) -> np.ndarray:
    """n random poses of `family` (None: a random family per call from BODY_FAMILIES or HAND_FAMILIES) ->
    joint_pose (n, J-1, 3) float32, SMPL-style axis-angles in the model's rest axes."""
    families = pose_families(body)
    family = family or families[rng.integers(len(families))]
    if family not in known_families(body):
        raise ValueError(f"unknown pose family {family!r} for {body.name}; expected one of {known_families(body)}")
    abstracts = {joint.abstract for joint in body_rig(body)}
    return angles_to_joint_pose(body, family_angles(family, abstracts, rng, n), n)


def sample_global_orient(
    body, rng: np.random.Generator, n: int, yaw_range_deg: float = 30.0, tilt_deg: float = 5.0
) -> np.ndarray:
    """(n, 3) axis-angle: a yaw about the up axis, uniform in +-yaw_range_deg around the canonical facing, after
    a small tilt (each horizontal axis normal with sigma tilt_deg / 2, clipped to +-tilt_deg)."""
    from scipy.spatial.transform import Rotation

    up = np.array(UP_VECTORS[body.up_axis])
    yaw = Rotation.from_rotvec(np.radians(rng.uniform(-yaw_range_deg, yaw_range_deg, n))[:, None] * up)
    tilt_vec = np.clip(rng.normal(0, tilt_deg / 2, size=(n, 3)), -tilt_deg, tilt_deg)
    tilt_vec -= (tilt_vec @ up)[:, None] * up
    tilt = Rotation.from_rotvec(np.radians(tilt_vec))
    return (yaw * tilt).as_rotvec().astype(np.float32)
