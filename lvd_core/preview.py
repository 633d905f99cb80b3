"""A quick PNG to check a fit by eye: front and side orthographic views of the scan (grey points) and the
fitted body (a flat-shaded mesh) overlaid. Coordinates are Z-up with the subject facing -Y (the model frame
of Anny; lvd_core.outputs.zup_from_input brings any input there). Photos: the person crop with the fitted
body's silhouette and the person mask's outline drawn on it, beside the body's side view.

Drawn with numpy (a z-buffered triangle rasteriser) and written with Pillow: a plotting library would spend
about 0.6 s on the body's tens of thousands of triangles, and 0.5 s more on its import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_FACES = 30_000  # more faces than this are subsampled (the preview must stay quick)
MAX_POINTS = 20_000
BODY_COLOUR = np.array([0.35, 0.55, 0.85])
SCAN_GREY, SCAN_ALPHA = 0.25, 0.4  # scan points drawn over everything, see-through
MASK_OUTLINE = np.array([1.0, 0.85, 0.1])
PANEL = 480  # pixels: each view's height and width
CAPTION = 22  # pixels: the strip above each view with its name, and above all with the title
MARGIN = 0.03  # share of a view's extent left empty around it
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
    rng = np.random.default_rng(0)
    if scan_points is not None and len(scan_points) > MAX_POINTS:
        scan_points = scan_points[rng.choice(len(scan_points), MAX_POINTS, replace=False)]
    if body_faces is not None and len(body_faces) > MAX_FACES:
        body_faces = body_faces[rng.choice(len(body_faces), MAX_FACES, replace=False)]
    everything = [np.asarray(a, dtype=np.float64) for a in (scan_points, body_vertices) if a is not None]
    panels = []
    for name, right, up, towards_viewer in VIEWS:
        screen = np.stack([right, up], axis=1)
        image = np.ones((PANEL, PANEL, 3))
        if everything:
            to_pixels = view_transform(np.concatenate(everything) @ screen, PANEL)
            if body_vertices is not None:
                draw_shaded_mesh(image, body_vertices, body_faces, screen, towards_viewer, to_pixels)
            if scan_points is not None:
                draw_points(image, to_pixels(scan_points @ screen), SCAN_GREY, SCAN_ALPHA)
        panels.append((name, image))
    return _save(path, panels, title)


def render_photo_preview(
    path: str | Path, crop_image: np.ndarray, person_mask: np.ndarray, body_mask: np.ndarray,
    body_vertices: np.ndarray, body_faces: np.ndarray, title: str | None = None,
) -> Path:  # fmt: skip
    """Write the photo preview to `path` (PNG): the crop (S, S, 3) uint8 with the fitted body's silhouette
    body_mask (S, S) bool tinted blue and the person mask's (S, S, >= 0.5) outline in yellow; and the side
    view of the body (V, 3) Z-up with faces (F, 3)."""
    from scipy import ndimage

    person = np.asarray(person_mask) >= 0.5
    overlay = crop_image.astype(np.float64) / 255
    overlay[body_mask] = 0.5 * overlay[body_mask] + 0.5 * BODY_COLOUR
    overlay[person & ~ndimage.binary_erosion(person, border_value=0)] = MASK_OUTLINE
    rows = np.minimum(np.arange(PANEL) * overlay.shape[0] // PANEL, overlay.shape[0] - 1)
    columns = np.minimum(np.arange(PANEL) * overlay.shape[1] // PANEL, overlay.shape[1] - 1)
    name, right, up, towards_viewer = VIEWS[1]
    screen = np.stack([right, up], axis=1)
    side = np.ones((PANEL, PANEL, 3))
    draw_shaded_mesh(side, body_vertices, body_faces, screen, towards_viewer, view_transform(body_vertices @ screen, PANEL))
    return _save(path, [("photo, fitted body (blue), person mask (yellow)", overlay[rows][:, columns]), (name, side)], title)


def view_transform(flat: np.ndarray, size: int):
    """The map from screen coordinates (N, 2) (y up) to pixel (column, row) (row down) framing the points
    `flat` (N, 2) in a size x size image, equal aspect, with a MARGIN around them."""
    low, high = flat.min(0), flat.max(0)
    span = (high - low).max() * (1 + 2 * MARGIN) + 1e-9
    centre = (low + high) / 2
    scale = size / span

    def to_pixels(points: np.ndarray) -> np.ndarray:
        pixels = (points - centre) * scale + size / 2
        return np.stack([pixels[:, 0], size - pixels[:, 1]], axis=1)

    return to_pixels


def shaded_triangles(vertices: np.ndarray, faces: np.ndarray, towards_viewer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces facing the viewer (closed bodies: back faces are hidden anyway) as their corners (F', 3, 3)
    and colours (F', 3), lit from the viewer (Lambert)."""
    corners = np.asarray(vertices, dtype=np.float64)[faces]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    facing = normals @ towards_viewer
    visible = facing > 0
    light = 0.25 + 0.75 * facing[visible, None]
    return corners[visible], np.clip(light * BODY_COLOUR, 0, 1)


def draw_shaded_mesh(image: np.ndarray, vertices, faces, screen: np.ndarray, towards_viewer: np.ndarray, to_pixels) -> None:
    """Rasterise the mesh's visible faces into `image` (H, W, 3) floats in place, the nearest face per pixel."""
    corners, colours = shaded_triangles(vertices, faces, towards_viewer)
    if not len(corners):
        return
    pixels = to_pixels(corners.reshape(-1, 3) @ screen).reshape(-1, 3, 2)
    depth = -(corners.mean(1) @ towards_viewer)  # smaller is nearer
    pixel, face = rasterise(pixels, depth, image.shape[:2])
    image.reshape(-1, 3)[pixel] = colours[face]


def rasterise(triangles: np.ndarray, depth: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (flat indices into an image of `shape`) whose centres lie in triangles (F, 3, 2) (pixel
    column, row), and the nearest such triangle of each (by its `depth` (F,), smaller nearer). Triangles are
    grouped by the size of their bounding box so each group tests one small grid of pixels per triangle."""
    height, width = shape
    low = np.floor(triangles.min(1) - 0.5).astype(np.int64)  # the pixel centres (i + 0.5) a triangle can hold
    extent = np.ceil(triangles.max(1) - 0.5).astype(np.int64) - low + 1
    side = np.maximum(extent.max(1), 1)
    buckets = 2 ** np.ceil(np.log2(side)).astype(np.int64)
    found_pixel, found_face = [], []
    for size in np.unique(buckets):
        faces = np.flatnonzero(buckets == size)
        offsets = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), axis=-1).reshape(-1, 2)
        centres = low[faces, None] + offsets[None] + 0.5  # (f, size^2, 2)
        inside = _inside(triangles[faces], centres)
        column, row = centres[..., 0] - 0.5, centres[..., 1] - 0.5
        inside &= (column >= 0) & (column < width) & (row >= 0) & (row < height)
        which, _ = np.nonzero(inside)
        found_pixel.append((row[inside] * width + column[inside]).astype(np.int64))
        found_face.append(faces[which])
    pixel, face = np.concatenate(found_pixel), np.concatenate(found_face)
    order = np.lexsort((depth[face], pixel))  # by pixel, nearest first
    pixel, face = pixel[order], face[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    return pixel[first], face[first]


def _inside(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(F, P) whether points (F, P, 2) lie in their triangle (F, 3, 2), edges included (either winding), so
    triangles that share an edge leave no gap between them."""
    a, b, c = (triangles[:, k, None] for k in range(3))

    def edge(p, q):  # the cross product (q - p) x (point - p), per point
        return (q[..., 0] - p[..., 0]) * (points[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (points[..., 0] - p[..., 0])

    e0, e1, e2 = edge(a, b), edge(b, c), edge(c, a)
    return ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))


def draw_points(image: np.ndarray, pixels: np.ndarray, grey: float, alpha: float) -> None:
    """Blend the pixels (N, 2) (column, row) that points fall on towards `grey`, once per pixel, in place."""
    height, width = image.shape[:2]
    column, row = np.floor(pixels[:, 0]).astype(np.int64), np.floor(pixels[:, 1]).astype(np.int64)
    keep = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    flat = np.unique(row[keep] * width + column[keep])
    colours = image.reshape(-1, 3)
    colours[flat] = (1 - alpha) * colours[flat] + alpha * grey


def _save(path: str | Path, panels: list[tuple[str, np.ndarray]], title: str | None) -> Path:
    """The panels (name, (PANEL, PANEL, 3) floats 0-1) side by side under their names and the title, as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    top = CAPTION * (2 if title else 1)
    canvas = Image.new("RGB", (PANEL * len(panels), PANEL + top), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    if title:
        draw.text((canvas.width / 2, CAPTION / 2), title, fill="black", font=font, anchor="mm")
    for k, (name, image) in enumerate(panels):
        canvas.paste(Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)), (k * PANEL, top))
        draw.text((k * PANEL + PANEL / 2, top - CAPTION / 2), name, fill="black", font=font, anchor="mm")
    canvas.save(path)
    return Path(path)
