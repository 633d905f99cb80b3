"""Load 3D scans (files or Blender arrays) into a clean, sampled `Scan`.

Pipeline, one small function each: read (trimesh, any supported format) -> drop NaN/inf vertices ->
merge duplicate vertices -> drop tiny fragments -> drop stray vertices far from the bulk -> validate -> detect
units and up axis (or check the given units) -> sample surface points. Everything stays in the input's own frame and units; `lvd_core.inputs.frame.normalize` maps
to the canonical frame of a network.

Every problem with the input raises `ScanError` with one line that names the problem and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from pykdtree.kdtree import KDTree
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SUPPORTED_EXTENSIONS = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
METRES_PER_UNIT = {"m": 1.0, "cm": 0.01, "mm": 0.001}
UNITS = (*METRES_PER_UNIT, "unitless")
KINDS = ("body", "hand")
MIN_POINTS = 100
# Size (body: extent along up; hand: largest extent) in metres that a real subject can have; a scan
# whose size falls in one of these ranges once converted from a unit is taken to be in that unit.
PLAUSIBLE_SIZE_M = {"body": (0.5, 2.5), "hand": (0.05, 0.35)}
# Given units are trusted this far beyond those ranges (a child, a partial scan); farther, they are wrong.
GIVEN_UNITS_SLACK = 2.0
# Refuse a scan when more than this fraction of its vertices are NaN/inf (a few are dropped).
MAX_NONFINITE_FRACTION = 0.5
# Fragments smaller than this fraction of the surface area (point clouds: of the points) are dropped.
MIN_FRAGMENT_FRACTION = 0.01
# Stray vertices: beyond the range that holds all but STRAY_TRIM of the vertices at each end of an axis, by more
# than STRAY_MARGIN times that range. A person's extremities lie inside the margin; a stray vertex metres away
# (or at 1e30) does not, and would otherwise set the size, hence the units and up axis.
STRAY_TRIM = 0.01
STRAY_MARGIN = 0.5


class ScanError(ValueError):
    """An input scan that cannot be used; the message is one line: the problem and the fix."""


@dataclass
class Scan:
    """A cleaned scan in its input frame and units.

    vertices: (N, 3) float64, faces: (F, 3) int64 or None (point cloud), points: (M, 3) float32 surface
    samples (area-weighted, M <= max_points; the vertices of a point cloud), units: "m" | "cm" | "mm" |
    "unitless", up: "y" | "z", kind: "body" | "hand", source: where it came from, cleaning: how many
    vertices/fragments each cleaning step removed.
    """

    vertices: np.ndarray
    faces: np.ndarray | None
    points: np.ndarray
    units: str
    up: str
    source: str
    kind: str = "body"
    cleaning: dict[str, int] = field(default_factory=dict)

    @property
    def extent(self) -> np.ndarray:
        """(3,) bounding-box size in input units."""
        return np.ptp(self.vertices, axis=0)

    @property
    def height(self) -> float:
        """Extent along the up axis, in input units."""
        return float(self.extent["xyz".index(self.up)])


def load_scan(
    source,
    *,
    units: str | None = None,
    up: str | None = None,
    kind: str = "body",
    max_points: int = 200_000,
    seed: int = 0,
) -> Scan:
    """Load, clean and sample a scan.

    source: a path (OBJ, PLY, STL, OFF, GLB/glTF; mesh or point cloud; glTF scenes are flattened with
    their node transforms) or a (vertices (N, 3), faces (F, 3) | None[, name for messages]) tuple (e.g. from Blender).
    units / up: override the heuristics (`detect_units`, `detect_up`). kind: "body" or "hand" (sets the
    heuristics' size ranges). max_points bounds `Scan.points` whatever the scan's size; seed makes the
    surface sampling reproducible.
    """
    if kind not in KINDS:
        raise ScanError(f"kind must be one of {KINDS}, got {kind!r}")
    if units is not None and units not in UNITS:
        raise ScanError(f"units must be one of {UNITS}, got {units!r}")
    if up is not None and up not in ("y", "z"):
        raise ScanError(f"up must be 'y' or 'z', got {up!r}")
    if isinstance(source, Scan):
        return loaded_scan(source, units=units, up=up, kind=kind)
    vertices, faces, name = read_geometry(source)
    cleaning: dict[str, int] = {}
    vertices, faces, cleaning["nonfinite_vertices"] = drop_nonfinite_vertices(vertices, faces, name)
    vertices, faces, cleaning["duplicate_vertices"] = merge_duplicate_vertices(vertices, faces)
    vertices, faces, cleaning["fragments"] = drop_small_fragments(vertices, faces)
    vertices, faces, cleaning["stray_vertices"] = drop_stray_vertices(vertices, faces)
    check_usable(vertices, name)
    up = up or detect_up(vertices, kind)
    if units is None:
        units = detect_units(vertices, up, kind)
    else:
        check_plausible_size(vertices, up, kind, units, name)
    points = sample_points(vertices, faces, max_points, seed)
    return Scan(vertices, faces, points, units, up, name, kind, cleaning)


def loaded_scan(scan: Scan, *, units: str | None, up: str | None, kind: str) -> Scan:
    """A Scan already loaded (by the caller, to reuse it), checked against what this load asks for."""
    asked = {"units": units or scan.units, "up": up or scan.up, "kind": kind}
    if asked != {"units": scan.units, "up": scan.up, "kind": scan.kind}:
        raise ScanError(f"{scan.source} was loaded as {scan.units}, {scan.up} up, a {scan.kind}; load it again for {asked}")
    return scan


# ---------------------------------------------------------------- reading


def read_geometry(source) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Return (vertices (N, 3) float64, faces (F, 3) int64 | None, source name) from a path or array pair."""
    if isinstance(source, (str, os.PathLike)):
        return (*_read_file(Path(source)), str(source))
    if isinstance(source, (tuple, list)) and len(source) in (2, 3):  # (vertices, faces[, name for messages])
        vertices, faces = _check_arrays(*source[:2])
        return vertices, faces, source[2] if len(source) == 3 else "arrays"
    raise ScanError(f"source must be a file path or a (vertices, faces[, name]) tuple, got {type(source).__name__}")


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise ScanError(f"scan file not found: {path}; check the path")
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise ScanError(
            f"unsupported scan format {path.suffix!r} ({path.name}); export it as one of {' '.join(SUPPORTED_EXTENSIONS)}"
        )
    if path.stat().st_size == 0:
        raise ScanError(f"scan file is empty: {path}; re-export the scan")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as error:  # trimesh raises many types; rephrase them as one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ScanError(f"cannot read {path.name} as {path.suffix} ({reason}); check that the file is a valid mesh") from None
    vertices, faces = _flatten(loaded)
    if len(vertices) == 0:
        raise ScanError(f"no vertices found in {path.name}; is it really a {path.suffix} mesh or point cloud?")
    return _check_arrays(vertices, faces)


def _flatten(loaded) -> tuple[np.ndarray, np.ndarray | None]:
    """Vertices and faces of a Trimesh, PointCloud or Scene (meshes concatenated with their transforms;
    a scene's point clouds are used only when it holds no mesh)."""
    if isinstance(loaded, trimesh.Trimesh):
        return np.asarray(loaded.vertices), np.asarray(loaded.faces)
    if isinstance(loaded, trimesh.PointCloud):
        return np.asarray(loaded.vertices), None
    meshes, clouds = [], []
    if isinstance(loaded, trimesh.Scene):
        for node in loaded.graph.nodes_geometry:
            transform, geometry_name = loaded.graph[node]
            geometry = loaded.geometry[geometry_name]
            if isinstance(geometry, (trimesh.Trimesh, trimesh.PointCloud)):
                vertices = trimesh.transform_points(np.asarray(geometry.vertices), transform)
                if isinstance(geometry, trimesh.Trimesh):
                    meshes.append((vertices, np.asarray(geometry.faces)))
                else:
                    clouds.append(vertices)
    if meshes:
        offsets = np.cumsum([0] + [len(v) for v, _ in meshes[:-1]])
        faces = np.concatenate([f + offset for (_, f), offset in zip(meshes, offsets)])
        return np.concatenate([v for v, _ in meshes]), faces
    if clouds:
        return np.concatenate(clouds), None
    return np.zeros((0, 3)), None


def _check_arrays(vertices, faces) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        vertices = np.asarray(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScanError("vertices must be an (N, 3) array of numbers") from None
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ScanError(f"vertices must be an (N, 3) array, got shape {vertices.shape}")
    if faces is None or len(faces) == 0:
        return vertices, None
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ScanError(f"faces must be an (F, 3) integer array of triangles, got {faces.dtype} {faces.shape}; triangulate the mesh")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        bad = faces.max() if faces.max() >= len(vertices) else faces.min()
        raise ScanError(
            f"faces index vertex {bad} but there are {len(vertices)} vertices; faces must be 0-based indices into vertices"
        )
    return vertices, faces


# ---------------------------------------------------------------- cleaning


def _keep_vertices(vertices, faces, keep: np.ndarray):
    """Keep vertices where keep (N,) bool; drop the faces that use a removed vertex and reindex the rest."""
    if faces is None:
        return vertices[keep], None
    new_index = np.cumsum(keep) - 1
    faces = faces[keep[faces].all(axis=1)]
    return vertices[keep], new_index[faces]


def drop_nonfinite_vertices(vertices, faces, name: str = "scan"):
    """Drop NaN/inf vertices (and their faces); refuse when most are bad. Returns (vertices, faces, dropped)."""
    finite = np.isfinite(vertices).all(axis=1)
    dropped = int((~finite).sum())
    if dropped > MAX_NONFINITE_FRACTION * len(vertices):
        raise ScanError(f"{dropped} of {len(vertices)} vertices of {name} are NaN or infinite; re-export the scan")
    if dropped == 0:
        return vertices, faces, 0
    return (*_keep_vertices(vertices, faces, finite), dropped)


def merge_duplicate_vertices(vertices, faces):
    """Merge exactly coincident vertices (UV/normal seams split them in OBJ files), drop faces that collapse
    and vertices no face uses. Returns (vertices, faces, removed vertex count)."""
    count = len(vertices)
    order = np.lexsort(vertices.T)
    sorted_vertices = vertices[order]
    starts_group = np.r_[True, (sorted_vertices[1:] != sorted_vertices[:-1]).any(axis=1)]
    inverse = np.empty(count, np.int64)
    inverse[order] = np.cumsum(starts_group) - 1
    vertices = sorted_vertices[starts_group]
    if faces is not None:
        faces = inverse.reshape(-1)[faces]
        collapsed = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
        faces = faces[~collapsed]
        if len(faces) == 0:
            return vertices, None, count - len(vertices)  # nothing but degenerate faces: a point cloud
        used = np.zeros(len(vertices), bool)
        used[faces] = True
        if not used.all():
            vertices, faces = _keep_vertices(vertices, faces, used)
    return vertices, faces, count - len(vertices)


def drop_small_fragments(vertices, faces, min_fraction: float = MIN_FRAGMENT_FRACTION):
    """Drop connected pieces holding < min_fraction of the surface area (point clouds: of the points);
    the largest piece is always kept. Returns (vertices, faces, dropped fragment count)."""
    if len(vertices) < MIN_POINTS:
        return vertices, faces, 0  # check_usable reports it
    labels = _component_labels(vertices, faces)
    if faces is None:
        sizes = np.bincount(labels).astype(np.float64)
    else:
        sizes = np.bincount(labels[faces[:, 0]], weights=_face_areas(vertices, faces), minlength=labels.max() + 1)
    keep_component = (sizes >= min_fraction * sizes.sum()) | (sizes == sizes.max())
    dropped = int((~keep_component).sum())
    if dropped == 0:
        return vertices, faces, 0
    return (*_keep_vertices(vertices, faces, keep_component[labels]), dropped)


def drop_stray_vertices(vertices, faces, trim: float = STRAY_TRIM, margin: float = STRAY_MARGIN):
    """Drop vertices far outside the bulk of the scan on some axis (STRAY_TRIM, STRAY_MARGIN), and their faces.
    Returns (vertices, faces, dropped count)."""
    if len(vertices) < MIN_POINTS:
        return vertices, faces, 0  # check_usable reports it
    low, high = np.quantile(vertices, [trim, 1 - trim], axis=0)
    reach = margin * (high - low)
    keep = ((vertices >= low - reach) & (vertices <= high + reach)).all(axis=1)
    dropped = int((~keep).sum())
    if dropped == 0:
        return vertices, faces, 0
    return (*_keep_vertices(vertices, faces, keep), dropped)


def _component_labels(vertices, faces) -> np.ndarray:
    """(N,) connected-component label of each vertex: along mesh edges, or for a point cloud along links
    to the 5 nearest neighbours no longer than twice the median distance to the 5th neighbour."""
    count = len(vertices)
    if faces is not None:  # two edges per triangle connect all three corners
        start, end = faces[:, :2].ravel(), faces[:, 1:].ravel()
    else:
        distance, neighbour = KDTree(vertices).query(vertices, k=6)
        linked = distance[:, 1:] <= 2 * np.median(distance[:, -1])
        start = np.repeat(np.arange(count), 5)[linked.ravel()]
        end = neighbour[:, 1:].ravel()[linked.ravel()].astype(np.int64)
    graph = coo_matrix((np.ones(len(start), np.int8), (start, end)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _face_areas(vertices, faces) -> np.ndarray:
    """(F,) triangle areas."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    (ux, uy, uz), (vx, vy, vz) = (b - a).T, (c - a).T
    return 0.5 * np.sqrt((uy * vz - uz * vy) ** 2 + (uz * vx - ux * vz) ** 2 + (ux * vy - uy * vx) ** 2)


def check_usable(vertices, name: str = "scan") -> None:
    """Refuse scans with too few points or no volume (all points on a plane, line or point)."""
    if len(vertices) < MIN_POINTS:
        raise ScanError(f"{name} has only {len(vertices)} usable points; need at least {MIN_POINTS} (a full scan)")
    extent = np.ptp(vertices, axis=0)
    if extent.min() <= 1e-6 * extent.max() or extent.max() == 0:
        raise ScanError(f"{name} is degenerate: its extent is {np.round(extent, 6).tolist()} (flat, a line or a point)")


# ---------------------------------------------------------------- heuristics


def detect_up(vertices, kind: str = "body") -> str:
    """Up axis: for a body, the larger of the y and z extents (a standing person is tallest along up);
    hands have no natural up, so "y" (MANO's convention). Pass up= for lying bodies."""
    if kind == "hand":
        return "y"
    extent = np.ptp(vertices, axis=0)
    return "y" if extent[1] >= extent[2] else "z"


def detect_units(vertices, up: str, kind: str = "body") -> str:
    """The unit in which the scan's size is plausible (body: height 0.5-2.5 m, measured along up; hand:
    largest extent 5-35 cm), else "unitless"."""
    size = subject_size(vertices, up, kind)
    for unit, metres in METRES_PER_UNIT.items():
        if is_plausible_size(size * metres, kind):
            return unit
    return "unitless"


def subject_size(vertices, up: str, kind: str) -> float:
    """In the scan's units: a body's extent along up, a hand's largest extent."""
    extent = np.ptp(vertices, axis=0)
    return float(extent["xyz".index(up)] if kind == "body" else extent.max())


def is_plausible_size(metres: float, kind: str, slack: float = 1.0) -> bool:
    low, high = PLAUSIBLE_SIZE_M[kind]
    return low / slack <= metres <= high * slack


def check_plausible_size(vertices, up: str, kind: str, units: str, name: str = "scan") -> None:
    """Refuse a scan whose size in the given units is no person's (or hand's), even with GIVEN_UNITS_SLACK:
    the units (or the up axis) are wrong."""
    if units == "unitless":
        return
    size = subject_size(vertices, up, kind)
    if is_plausible_size(size * METRES_PER_UNIT[units], kind, GIVEN_UNITS_SLACK):
        return
    fitting = [unit for unit, metres in METRES_PER_UNIT.items() if is_plausible_size(size * metres, kind)]
    low, high = PLAUSIBLE_SIZE_M[kind]
    what = "tall" if kind == "body" else "long"
    fix = f"it is in {fitting[0]}? pass --units {fitting[0]}" if fitting else "check its units and up axis"
    raise ScanError(f"{name} is {size:.4g} {units} {what}, no {kind}'s size ({low}-{high} m); {fix}")


# ---------------------------------------------------------------- sampling


def sample_points(vertices, faces, max_points: int, seed: int = 0) -> np.ndarray:
    """(M, 3) float32 points for grids: max_points area-weighted surface samples of a mesh, or the
    vertices of a point cloud (a random subset of max_points when there are more)."""
    rng = np.random.default_rng(seed)
    if faces is None:
        if len(vertices) > max_points:
            vertices = vertices[rng.choice(len(vertices), max_points, replace=False)]
        return vertices.astype(np.float32)
    cumulative_area = np.cumsum(_face_areas(vertices, faces))
    chosen = np.searchsorted(cumulative_area, rng.random(max_points) * cumulative_area[-1], side="right")
    corners = vertices[faces[np.minimum(chosen, len(faces) - 1)]]
    # Uniform barycentric coordinates: fold the unit square onto the triangle.
    u, v = rng.random((2, max_points, 1))
    folded = u + v > 1
    u, v = np.where(folded, 1 - u, u), np.where(folded, 1 - v, v)
    points = corners[:, 0] + u * (corners[:, 1] - corners[:, 0]) + v * (corners[:, 2] - corners[:, 0])
    return points.astype(np.float32)
