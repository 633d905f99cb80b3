"""The fit preview's rasteriser: every pixel of a surface covered once, by its nearest face; the PNG framed."""

import numpy as np
from PIL import Image

from lvd_core.preview import BODY_COLOUR, CAPTION, PANEL, SCAN_ALPHA, SCAN_GREY, rasterise, render_photo_preview, render_preview


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(float)


def _grid_triangles(cells: int, size: float) -> np.ndarray:
    """A size x size square (pixels, from 10, 10) split into 2 * cells^2 tiny triangles: (F, 3, 2)."""
    step = size / cells
    triangles = []
    for i in range(cells):
        for j in range(cells):
            a, b = np.array([10 + i * step, 10 + j * step]), np.array([10 + (i + 1) * step, 10 + j * step])
            c, d = np.array([10 + i * step, 10 + (j + 1) * step]), np.array([10 + (i + 1) * step, 10 + (j + 1) * step])
            triangles += [[a, b, d], [a, d, c]]
    return np.array(triangles)


def test_triangles_sharing_edges_leave_no_gap_and_the_nearest_wins():
    square = _grid_triangles(cells=37, size=50.0)  # triangles smaller than a pixel, edges off the pixel grid
    pixel, face = rasterise(square, np.zeros(len(square)), (80, 80))
    assert len(pixel) == len(np.unique(pixel)) == 50 * 50  # centres 10.5 .. 59.5: every one, once
    near = np.array([[[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]]])
    both = np.concatenate([near, near])
    _, face = rasterise(both, np.array([1.0, 0.0]), (40, 40))
    assert (face == 1).all()


def test_the_preview_shows_the_body_front_on_and_the_scan_over_it(tmp_path):
    cube = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (0.0, 1.0)])
    faces = np.array([[0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3], [0, 1, 3], [0, 3, 2],
                      [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6]])  # fmt: skip
    normals = np.cross(cube[faces[:, 1]] - cube[faces[:, 0]], cube[faces[:, 2]] - cube[faces[:, 0]])
    inward = (normals * (cube[faces].mean(1) - cube.mean(0))).sum(1) < 0
    faces[inward] = faces[inward][:, ::-1]  # every face wound outwards
    scan = np.array([[0.0, -0.6, 0.5]])  # one point in front of the cube's centre
    path = render_preview(tmp_path / "p.png", scan_points=scan, body_vertices=cube, body_faces=faces, title="cube")
    image = _pixels(path)
    assert image.shape == (PANEL + 2 * CAPTION, 2 * PANEL, 3)
    front = image[2 * CAPTION :, :PANEL]
    middle = front[PANEL // 2 + 5, PANEL // 2 + 5]  # on the face turned to the viewer, beside the scan point
    assert np.abs(middle - BODY_COLOUR * 255).max() <= 1
    under_point = front[PANEL // 2, PANEL // 2]  # the scan point, drawn see-through over the body
    assert np.abs(under_point - 255 * ((1 - SCAN_ALPHA) * BODY_COLOUR + SCAN_ALPHA * SCAN_GREY)).max() <= 1.5
    assert (front[2, 2] == 255).all()  # the margin is white


def test_the_photo_preview_puts_the_crop_beside_the_side_view(tmp_path):
    crop = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64))
    mask[16:48, 16:48] = 1
    body_mask = mask > 0
    vertices = np.array([[0, -0.1, 0], [0, 0.1, 0], [0, 0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 1]])
    path = render_photo_preview(tmp_path / "p.png", crop, mask, body_mask, vertices, faces)
    image = _pixels(path)
    assert image.shape == (PANEL + CAPTION, 2 * PANEL, 3)
    photo = image[CAPTION:, :PANEL]
    assert np.abs(photo[PANEL // 2, PANEL // 2] - 0.5 * BODY_COLOUR * 255).max() <= 1  # tinted body, black photo
    assert (photo[5, 5] == 0).all()
    assert (image[CAPTION:, PANEL:] < 250).any()  # the side view has the body
