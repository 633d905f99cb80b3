"""Synthetic SMPL and MANO files in the official formats (key names, shapes, chumpy objects, sparse J_regressor).

No licensed file is ever needed: the geometry is a crude stick figure / hand (points around bones, weights by
distance to the bones), random but well-formed, which is all loading, posing and fitting tests need.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
# Rough SMPL rest joints (metres, Y-up, facing +Z).
SMPL_JOINTS = np.array([
    [0, 0, 0], [0.06, -0.09, 0], [-0.06, -0.09, 0], [0, 0.11, -0.02], [0.1, -0.47, 0], [-0.1, -0.47, 0],
    [0, 0.25, 0], [0.09, -0.87, -0.04], [-0.09, -0.87, -0.04], [0, 0.31, 0.02], [0.11, -0.93, 0.08],
    [-0.11, -0.93, 0.08], [0, 0.52, -0.01], [0.08, 0.43, -0.01], [-0.08, 0.43, -0.01], [0, 0.6, 0.04],
    [0.18, 0.46, -0.02], [-0.18, 0.46, -0.02], [0.44, 0.44, -0.04], [-0.44, 0.44, -0.04], [0.69, 0.45, -0.04],
    [-0.69, 0.45, -0.04], [0.77, 0.44, -0.05], [-0.77, 0.44, -0.05],
])  # fmt: skip
MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]


def _mano_joints() -> np.ndarray:
    """Wrist at the origin, four fingers along +x spread in z, the thumb off to the side (metres, Y-up)."""
    joints = [[0.0, 0.0, 0.0]]
    for z in (0.02, 0.0, -0.04, -0.02):  # index, middle, pinky, ring (MANO's order)
        joints += [[0.09 + 0.03 * k, 0.0, z] for k in range(3)]
    joints += [[0.03 + 0.025 * k, -0.01, 0.04 + 0.012 * k] for k in range(3)]  # thumb
    return np.array(joints)


def _bone_segments(joints: np.ndarray, parents: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For every joint the segment from it to its first child (or a short stub for leaves)."""
    segments = []
    for j in range(len(parents)):
        children = [c for c, p in enumerate(parents) if p == j]
        end = joints[children[0]] if children else joints[j] + 0.4 * (joints[j] - joints[max(parents[j], 0)])
        segments.append((joints[j], end))
    return segments


def make_model_arrays(kind: str, seed: int = 0) -> dict:
    """The official keys with random but consistent content, as float64 numpy / scipy sparse."""
    rng = np.random.default_rng(seed)
    if kind == "smpl":
        joints, parents, n_vertices, n_faces, n_posedirs, radius = SMPL_JOINTS, SMPL_PARENTS, 6890, 13776, 207, 0.06
    else:
        joints, parents, n_vertices, n_faces, n_posedirs, radius = _mano_joints(), MANO_PARENTS, 778, 1538, 135, 0.008
    n_joints = len(parents)
    segments = _bone_segments(joints, parents)
    owner = np.arange(n_vertices) % n_joints
    t = rng.uniform(0, 1, n_vertices)[:, None]
    starts = np.array([segments[j][0] for j in owner])
    ends = np.array([segments[j][1] for j in owner])
    direction = rng.normal(size=(n_vertices, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    v_template = starts + t * (ends - starts) + radius * direction
    # Weights: inverse distance to the 4 nearest bone segments.
    seg_mid = np.array([(a + b) / 2 for a, b in segments])
    dist = np.linalg.norm(v_template[:, None] - seg_mid[None], axis=-1) + 1e-3
    nearest = np.argsort(dist, axis=1)[:, :4]
    weights = np.zeros((n_vertices, n_joints))
    inv = 1.0 / np.take_along_axis(dist, nearest, 1) ** 2
    np.put_along_axis(weights, nearest, inv / inv.sum(1, keepdims=True), 1)
    # Shape: beta0 scales, beta1 stretches along y, the rest small smooth random offsets per bone.
    centred = v_template - v_template.mean(0)
    shapedirs = np.zeros((n_vertices, 3, 10))
    shapedirs[:, :, 0] = 0.05 * centred
    shapedirs[:, 1, 1] = 0.05 * centred[:, 1]
    shapedirs[:, :, 2:] = 0.01 * rng.normal(size=(n_joints, 3, 8))[owner] * radius / 0.06
    # Pose correctives of joint j (its 9 rotation features) act only on vertices that joint j moves, as in SMPL.
    posedirs = 1e-3 * rng.normal(size=(n_vertices, 3, n_posedirs)) * radius / 0.06
    feature_joint = np.arange(n_posedirs) // 9 + 1
    posedirs *= (weights[:, feature_joint] > 0)[:, None, :]
    regressor = np.zeros((n_joints, n_vertices))
    for j in range(n_joints):
        close = np.argsort(np.linalg.norm(v_template - joints[j], axis=1))[:12]
        regressor[j, close] = 1.0 / 12
    faces = np.stack([np.arange(n_faces) % n_vertices, (np.arange(n_faces) + 1) % n_vertices,
                      (np.arange(n_faces) + 2) % n_vertices], axis=1).astype(np.uint32)  # fmt: skip
    kintree = np.array([[4294967295 if p < 0 else p for p in parents], list(range(n_joints))], dtype=np.int64)
    arrays = dict(
        v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
        J_regressor=scipy.sparse.csc_matrix(regressor), weights=weights, kintree_table=kintree, f=faces,
        J=regressor @ v_template, bs_style="lbs", bs_type="lrotmin",
    )  # fmt: skip
    if kind == "mano":
        arrays.update(hands_components=np.eye(45), hands_mean=np.zeros(45), hands_coeffs=np.zeros((1554, 45)))
    return arrays


# -- chumpy look-alikes: classes whose pickled names are chumpy's, so files look like the official ones ----------
def _fake_chumpy_modules():
    ch, reordering = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")

    class Ch:  # chumpy pickles Ch objects as their __dict__ minus caches: the array lives in "x"
        def __init__(self, x):
            self.x = x

    class Select:
        def __init__(self, a, idxs, preferred_shape):
            self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch.Ch, reordering.Select = Ch, Select
    return {"chumpy": types.ModuleType("chumpy"), "chumpy.ch": ch, "chumpy.reordering": reordering}


def write_official_pickle(arrays: dict, path: Path, *, select_shapedirs: bool = False) -> Path:
    """A pickle as the official files are: shapedirs (and J) as chumpy Ch (or Select), protocol 2."""
    modules = _fake_chumpy_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        Ch, Select = modules["chumpy.ch"].Ch, modules["chumpy.reordering"].Select
        out = dict(arrays)
        shapedirs = np.asarray(arrays["shapedirs"])
        if select_shapedirs:
            out["shapedirs"] = Select(Ch(shapedirs.ravel()), np.arange(shapedirs.size), shapedirs.shape)
        else:
            out["shapedirs"] = Ch(shapedirs)
        out["J"] = Ch(np.asarray(arrays["J"]))
        path.write_bytes(pickle.dumps(out, protocol=2))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


def write_npz(arrays: dict, path: Path) -> Path:
    """A cleaned .npz (dense J_regressor, no chumpy), as smplx's tools/clean_ch.py produces."""
    dense = {k: (v.toarray() if scipy.sparse.issparse(v) else np.asarray(v)) for k, v in arrays.items()}
    np.savez(path, **dense)
    return path
