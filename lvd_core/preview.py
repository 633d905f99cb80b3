"""A quick PNG to check a fit by eye: front and side orthographic views of the scan (grey points) and the
fitted body (a flat-shaded mesh) overlaid. Coordinates are Z-up with the subject facing -Y (the model frame
of Anny; lvd_core.outputs.zup_from_input brings any input there). Photos: the person crop with the fitted
body's silhouette and the person mask's outline drawn on it, beside the body's side view.
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
            _frame_view(ax, np.concatenate(everything) @ screen)
        ax.set_title(name)
    return _save(figure, path, title)


def _frame_view(ax, flat: np.ndarray) -> None:
    """Fit the axes around projected points (N, 2) with a small margin, equal aspect, no axes drawn."""
    low, high = flat.min(0), flat.max(0)
    pad = 0.03 * (high - low).max()
    ax.set_xlim(low[0] - pad, high[0] + pad)
    ax.set_ylim(low[1] - pad, high[1] + pad)
    ax.set_aspect("equal")
    ax.axis("off")


def _save(figure, path: str | Path, title: str | None) -> Path:
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def render_photo_preview(
    path: str | Path, crop_image: np.ndarray, person_mask: np.ndarray, body_mask: np.ndarray,
    body_vertices: np.ndarray, body_faces: np.ndarray, title: str | None = None,
) -> Path:  # fmt: skip
    """Write the photo preview to `path` (PNG): the crop (S, S, 3) uint8 with the fitted body's silhouette
    body_mask (S, S) bool tinted blue and the person mask's (S, S, >= 0.5) outline in yellow; and the side
    view of the body (V, 3) Z-up with faces (F, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from scipy import ndimage

    person = np.asarray(person_mask) >= 0.5
    overlay = crop_image.astype(np.float64) / 255
    overlay[body_mask] = 0.5 * overlay[body_mask] + 0.5 * BODY_COLOUR
    overlay[person & ~ndimage.binary_erosion(person, border_value=0)] = (1.0, 0.85, 0.1)
    figure, (photo_ax, side_ax) = plt.subplots(1, 2, figsize=(8, 4.5), dpi=100)
    photo_ax.imshow(overlay, interpolation="nearest")
    photo_ax.set_title("photo, fitted body (blue), person mask (yellow)", fontsize=9)
    name, right, up, towards_viewer = VIEWS[1]
    screen = np.stack([right, up], axis=1)
    polygons, colours = shaded_triangles(body_vertices, body_faces, screen, towards_viewer)
    side_ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="none", antialiased=False))
    _frame_view(side_ax, body_vertices @ screen)
    side_ax.set_title(name)
    photo_ax.axis("off")
    return _save(figure, path, title)


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
