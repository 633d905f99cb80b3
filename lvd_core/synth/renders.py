"""Synthetic photos: a posed body rasterised on the CPU (numpy z-buffer, Lambert shading) over a random background.

Camera convention (see `project`): a pinhole in OpenCV axes (x right, y down, z forward into the scene) with
world-to-camera rotation R (3, 3) and translation t (3,): X_cam = R X + t; pixel (u, v) = f X_cam[:2] / X_cam[2] + c.
Pixel coordinates as in `lvd_core.inputs.image`: the pixel in row i, column j covers [j, j+1) x [i, i+1).
The camera looks at the body from its canonical front (Anny: from -Y; SMPL: from +Z), with image up = model up,
so the body's left (+X) appears on the image's right. The intrinsics already hold the paper's crop: the image
is the square of 1.1 x the larger side of the person's bounding box, centred on it, so the person is about
256 / 1.1 = 233 px tall (or wide). At the person's centre one pixel spans `camera["metres_per_pixel"]` metres
(depth / f); the camera distance is 2.5-8 m, close to weak perspective. A paper-style orthographic query frame
(a 173-unit person in a [-102.4, 102.4] image) is `(u - 128) * 0.8` units per pixel for a 233 px person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..body import BodyParams
from .scans import posed_body
from .surface import body_surface, face_cross, vertex_normals

IMAGE_SIZE = 256
CROP_MARGIN = 1.1  # as lvd_core.inputs.image.CROP_MARGIN: box = 1.1 x the larger side of the person box


@dataclass
class SyntheticPhoto:
    """image (H, W, 3) uint8 RGB; mask (H, W) float32 1 on the person; camera (dict: R (3, 3), t (3,),
    focal_px, principal_px (2,), size_px, metres_per_pixel); vertices_gt (V, 3) float32 model frame; params."""

    image: np.ndarray
    mask: np.ndarray
    camera: dict
    vertices_gt: np.ndarray
    params: BodyParams


def project(camera: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model-frame points (N, 3) -> pixel coordinates (N, 2) and camera depth (N,)."""
    cam = points @ np.asarray(camera["R"]).T + np.asarray(camera["t"])
    return camera["focal_px"] * cam[:, :2] / cam[:, 2:3] + np.asarray(camera["principal_px"]), cam[:, 2]


def front_camera(body, vertices: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE) -> dict:
    """A camera 2.5-8 m in front of the body's canonical facing, a few degrees of elevation and roll, with
    intrinsics that make the image the paper's crop of the person. vertices (V, 3)."""
    from scipy.spatial.transform import Rotation

    surface = body_surface(body)
    view, down = -surface.forward, -surface.up
    base = np.stack([np.cross(down, view), down, view])  # rows: camera x, y, z in model axes
    jitter = Rotation.from_euler("xz", rng.uniform([-10, -3], [10, 3]), degrees=True).as_matrix()
    rotation = jitter @ base
    centre = (vertices.min(0) + vertices.max(0)) / 2
    translation = np.array([0.0, 0.0, rng.uniform(2.5, 8.0)]) - rotation @ centre
    camera = {"R": rotation, "t": translation, "focal_px": 1.0, "principal_px": np.zeros(2), "size_px": size}
    xy, depth = project(camera, vertices)
    low, high = xy.min(0), xy.max(0)
    focal = size / (CROP_MARGIN * (high - low).max())
    camera["focal_px"] = float(focal)
    camera["principal_px"] = size / 2 - focal * (low + high) / 2
    camera["metres_per_pixel"] = float(translation[2] / focal)
    return camera


def rasterize(xy: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer of triangles. xy (V, 2) pixels, depth (V,), faces (F, 3) (front-facing ones) ->
    face index per pixel (size*size,) (-1: empty), barycentric coordinates (size*size, 3).

    Each face tests the pixel centres of a K x K window at its bounding box, K the next power of two of its
    size (faces are grouped by K, so a body of 1-4 px triangles costs a few candidates per face)."""
    corners = np.take(xy, faces, axis=0)  # (F, 3, 2)
    # Reductions over an axis of 3 are slow in numpy: elementwise minimum / maximum of the corners instead.
    low = np.minimum(np.minimum(corners[:, 0], corners[:, 1]), corners[:, 2])
    high = np.maximum(np.maximum(corners[:, 0], corners[:, 1]), corners[:, 2])
    first = np.ceil(low - 0.5).astype(np.int64)  # the first pixel whose centre may be inside
    extent = np.floor(high - 0.5).astype(np.int64) - first + 1
    bucket = np.ceil(np.log2(np.maximum(np.maximum(extent[:, 0], extent[:, 1]), 1))).astype(np.int64)
    pixel_ids, face_ids, weights = [], [], []
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        k = 2**b
        columns = first[sel, 0, None] + np.tile(np.arange(k), k)[None]  # (Fb, k*k)
        rows = first[sel, 1, None] + np.repeat(np.arange(k), k)[None]
        w1, w2 = _barycentric(corners[sel], columns + 0.5, rows + 0.5)
        inside = (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1) & (columns >= 0) & (columns < size) & (rows >= 0) & (rows < size)
        f_idx, p_idx = np.nonzero(inside)
        pixel_ids.append(rows[f_idx, p_idx] * size + columns[f_idx, p_idx])
        face_ids.append(sel[f_idx])
        weights.append(np.stack([w1[f_idx, p_idx], w2[f_idx, p_idx]], 1))
    pixel_id, face_id, w = np.concatenate(pixel_ids), np.concatenate(face_ids), np.concatenate(weights)
    bary = np.concatenate([1 - w[:, :1] - w[:, 1:], w], 1)
    z = interpolate(bary, depth[:, None], np.take(faces, face_id, axis=0))[:, 0]
    nearest = torch.full((size * size,), np.inf, dtype=torch.float64)
    nearest.scatter_reduce_(0, torch.from_numpy(pixel_id), torch.from_numpy(z.astype(np.float64)), "amin")
    winner = z <= nearest.numpy()[pixel_id]
    face_map = np.full(size * size, -1, dtype=np.int64)
    bary_map = np.zeros((size * size, 3))
    face_map[pixel_id[winner]] = face_id[winner]
    bary_map[pixel_id[winner]] = bary[winner]
    return face_map, bary_map


def interpolate(bary: np.ndarray, values: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric interpolation: bary (P, 3), per-vertex values (V, C), corner vertex indices (P, 3) -> (P, C)."""
    return sum(bary[:, k, None] * np.take(values, corners[:, k], axis=0) for k in range(3))


def _barycentric(triangles: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """triangles (F, 3, 2), points x, y (F, P) -> the weights (F, P) of corners 1 and 2 (corner 0's is the
    rest), for either winding."""
    ax, ay = triangles[:, 0, 0, None], triangles[:, 0, 1, None]
    e1x, e1y = triangles[:, 1, 0, None] - ax, triangles[:, 1, 1, None] - ay
    e2x, e2y = triangles[:, 2, 0, None] - ax, triangles[:, 2, 1, None] - ay
    det = e1x * e2y - e1y * e2x
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    px, py = x - ax, y - ay
    return (px * e2y - py * e2x) / det, (e1x * py - e1y * px) / det


# ---------------------------------------------------------------------------------------------------------
# Appearance


SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.80, 0.69]), np.array([0.31, 0.20, 0.14])


def vertex_colours(body, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) albedo in [0, 1]: skin, a top (torso and random sleeves), a bottom (thighs, shins for trousers),
    shoes and hair, each a random colour, with a little per-vertex variation."""
    surface = body_surface(body)
    skin = SKIN_LIGHT + rng.uniform() * (SKIN_DARK - SKIN_LIGHT)
    colours = np.tile(skin, (body.vertex_count, 1))
    top, bottom, shoes, hair = rng.uniform(0.05, 0.95, size=(4, 3))
    sleeves = ["upper_arm", "forearm"][: rng.integers(0, 3)]
    legs = ["thigh", "shin"][: rng.integers(1, 3)]
    colours[surface.part_mask("torso", *sleeves)] = top
    colours[surface.part_mask(*legs)] = bottom
    colours[surface.part_mask("foot")] = shoes
    if rng.uniform() < 0.8:
        colours[surface.hair > 0.5] = hair
    return np.clip(colours * rng.uniform(0.92, 1.08, size=(body.vertex_count, 1)), 0, 1)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: a plain colour, a linear gradient or smooth noise."""
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(rng.uniform(size=3), (size, size, 3)).copy()
    if kind == 1:
        a, b = rng.uniform(size=(2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * np.linspace(0, 1, size)[None, :] + np.sin(angle) * np.linspace(0, 1, size)[:, None]
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
        return a + ramp[..., None] * (b - a)
    coarse = rng.uniform(size=(8, 8, 3))
    grid = np.linspace(0, 7, size)
    i0 = np.minimum(grid.astype(int), 6)
    frac = grid - i0
    rows = coarse[i0] * (1 - frac)[:, None, None] + coarse[i0 + 1] * frac[:, None, None]  # bilinear upsampling
    return rows[:, i0] * (1 - frac)[None, :, None] + rows[:, i0 + 1] * frac[None, :, None]


def render_photo(body, params: BodyParams, rng: np.random.Generator, size: int = IMAGE_SIZE) -> SyntheticPhoto:
    """A random photo of the body posed by `params` (batch of 1): random clothes, skin, light and background."""
    vertices, _ = posed_body(body, params)
    surface = body_surface(body)
    camera = front_camera(body, vertices, rng, size)
    xy, depth = project(camera, vertices)
    cam_vertices = vertices @ camera["R"].T + camera["t"]
    towards_camera = face_cross(cam_vertices, surface.faces) * np.take(cam_vertices, surface.faces[:, 0], axis=0)
    faces = surface.faces[towards_camera[:, 0] + towards_camera[:, 1] + towards_camera[:, 2] < 0]  # back faces culled
    face_map, bary = rasterize(xy, depth, faces, size)
    covered = face_map >= 0
    corners = np.take(faces, face_map[covered], axis=0)  # (P, 3)
    normal = interpolate(bary[covered], vertex_normals(cam_vertices, surface), corners)
    normal /= np.maximum(np.sqrt((normal * normal).sum(1)), 1e-9)[:, None]
    albedo = interpolate(bary[covered], vertex_colours(body, rng), corners)
    light = rng.normal(size=3) * [0.6, 0.6, 0.3] + [0, 0, -1.0]  # from roughly the camera's side
    light /= np.linalg.norm(light)
    ambient, diffuse = rng.uniform(0.25, 0.55), rng.uniform(0.4, 0.8)
    shade = ambient + diffuse * np.clip(-(normal @ light), 0, None)
    image = background(rng, size).reshape(-1, 3)
    image[covered] = albedo * shade[:, None]
    image = np.clip(image + rng.normal(scale=rng.uniform(0, 0.02), size=(len(image), 1)), 0, 1)  # sensor noise
    return SyntheticPhoto(
        image=(image.reshape(size, size, 3) * 255 + 0.5).astype(np.uint8),
        mask=covered.reshape(size, size).astype(np.float32),
        camera=camera,
        vertices_gt=vertices.astype(np.float32),
        params=params.detach().to(device="cpu"),
    )
