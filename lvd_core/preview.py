"""A quick PNG to check a fit by eye: front and side orthographic views of the scan (grey points) and the
fitted body (a flat-shaded mesh) overlaid. Coordinates are Z-up with the subject facing -Y (the model frame
of Anny; lvd_core.outputs.zup_from_input brings any input there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_FACES = 30_000  # more faces than this are subsampled (the preview must stay quick)
MAX_POINTS = 20_000
BODY_COLOUR = np.array([0.35, 0.55, 0.85])
# (name, screen x axis, screen y axis, towards-the-viewer axis), each a Z-up direction.
VIEWS = (
    ("front", np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, -1.0, 0])),
    ("side", np.array([0, 1.0, 0]), np.array([0, 0, 1.0]), np.array([1.0, 0, 0])),
)


def render_preview(
    path: str | Path,
    *,
    scan_points: np.ndarray | None = None,
    body_vertices: np.ndarray | None = None,
    body_faces: np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Write the front and side views to `path` (PNG) and return it. scan_points (N, 3), body_vertices
    (V, 3) with body_faces (F, 3): Z-up, either may be None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    rng = np.random.default_rng(0)
    if scan_points is not None and len(scan_points) > MAX_POINTS:
        scan_points = scan_points[rng.choice(len(scan_points), MAX_POINTS, replace=False)]
    if body_faces is not None and len(body_faces) > MAX_FACES:
        body_faces = body_faces[rng.choice(len(body_faces), MAX_FACES, replace=False)]
    figure, axes = plt.subplots(1, len(VIEWS), figsize=(8, 6), dpi=100)
    for ax, (name, right, up, towards_viewer) in zip(axes, VIEWS):
        screen = np.stack([right, up], axis=1)
        if body_vertices is not None:
            polygons, colours = shaded_triangles(body_vertices, body_faces, screen, towards_viewer)
            ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none", antialiased=False))
        if scan_points is not None:
            flat = scan_points @ screen
            ax.scatter(flat[:, 0], flat[:, 1], s=0.4, c="0.25", alpha=0.4, linewidths=0, rasterized=True)
        everything = [a for a in (scan_points, body_vertices) if a is not None]
        if everything:
            flat = np.concatenate(everything) @ screen
            low, high = flat.min(0), flat.max(0)
            pad = 0.03 * (high - low).max()
            ax.set_xlim(low[0] - pad, high[0] + pad)
            ax.set_ylim(low[1] - pad, high[1] + pad)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def shaded_triangles(vertices: np.ndarray, faces: np.ndarray, screen: np.ndarray, towards_viewer: np.ndarray):
    """The triangles facing the viewer, far to near (painter's algorithm), projected with `screen` (3, 2),
    and their colours lit from the viewer (Lambert)."""
    corners = vertices[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    facing = normals @ towards_viewer
    visible = facing > 0  # closed bodies: back faces are hidden anyway
    corners, facing = corners[visible], facing[visible]
    order = np.argsort(corners.mean(1) @ towards_viewer)
    light = 0.25 + 0.75 * facing[order, None]
    return corners[order] @ screen, np.clip(light * BODY_COLOUR, 0, 1)
