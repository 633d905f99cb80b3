"""Photo inputs: file formats, masks, automatic person masks, the paper's crop and the network tensor."""

import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lvd_core.inputs.image import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    CropTransform,
    ImageInputError,
    crop_person,
    from_blender_pixels,
    load_image,
    load_mask,
    network_image,
)
from lvd_core.inputs.person_mask import NoPersonError, _largest_region, find_person

PHOTO_NUMBERS = range(1, 7)
EXIF_ORIENTATION_TAG = 0x0112
ROTATE_90_CLOCKWISE_TO_DISPLAY = 6


def quadrant_image(height=48, width=64) -> np.ndarray:
    """Four flat colours, so orientation, size and colour survive lossy formats and are easy to check."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (220, 30, 30)
    image[: height // 2, width // 2 :] = (30, 220, 30)
    image[height // 2 :, : width // 2] = (30, 30, 220)
    image[height // 2 :, width // 2 :] = (220, 220, 30)
    return image


def assert_close_image(loaded, expected, tolerance):
    assert loaded.dtype == np.uint8 and loaded.shape == expected.shape
    assert np.abs(loaded.astype(int) - expected.astype(int)).max() <= tolerance


# ---------------------------------------------------------------------------------------------------------
# Files and arrays


@pytest.mark.parametrize(
    "suffix, options, tolerance",
    [(".png", {}, 0), (".webp", {"lossless": True}, 0), (".jpg", {"quality": 95}, 12), (".webp", {"quality": 90}, 20)],
)
def test_colour_formats_round_trip(tmp_path, suffix, options, tolerance):
    image = quadrant_image()
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(image).save(path, **options)
    # Lossy codecs smear the quadrant borders: compare the quadrants' interiors.
    interior = (slice(4, 20), slice(4, 28))
    assert load_image(path).shape == image.shape
    assert_close_image(load_image(path)[interior], image[interior], tolerance)


def test_sixteen_bit_colour_png(tmp_path):
    image16 = quadrant_image().astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "photo16.png"), image16[:, :, ::-1])  # OpenCV writes BGR
    assert_close_image(load_image(tmp_path / "photo16.png"), quadrant_image(), 1)


def test_grayscale_8_and_16_bit(tmp_path):
    gray = quadrant_image()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray8.png")
    cv2.imwrite(str(tmp_path / "gray16.png"), gray.astype(np.uint16) * 257)
    for name in ("gray8.png", "gray16.png"):
        assert_close_image(load_image(tmp_path / name), np.repeat(gray[:, :, None], 3, axis=2), 0)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.dstack([quadrant_image(), np.full((48, 64), 255, np.uint8)])
    rgba[:, :32, 3] = 0  # left half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert (loaded[:, :32] == 0).all()
    assert_close_image(loaded[:, 32:], quadrant_image()[:, 32:], 0)


def test_palette_png(tmp_path):
    Image.fromarray(quadrant_image()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "p.png")
    assert_close_image(load_image(tmp_path / "p.png"), quadrant_image(), 2)


def test_exif_rotation_is_applied(tmp_path):
    """A camera that stored the image sideways with 'rotate 90 degrees clockwise to display' in its EXIF."""
    image = quadrant_image()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = ROTATE_90_CLOCKWISE_TO_DISPLAY
    Image.fromarray(image).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    loaded = load_image(tmp_path / "rotated.jpg")
    upright = np.rot90(image, k=-1)
    assert loaded.shape == upright.shape == (64, 48, 3)
    interior = (slice(4, 28), slice(4, 20))
    assert_close_image(loaded[interior], upright[interior], 12)


@pytest.mark.parametrize(
    "array",
    [
        quadrant_image(),
        quadrant_image().astype(np.uint16) * 257,
        quadrant_image().astype(np.float32) / 255,
        np.dstack([quadrant_image().astype(np.float64) / 255, np.ones((48, 64))]),
    ],
    ids=["uint8", "uint16", "float", "float-rgba"],
)
def test_arrays(array):
    assert_close_image(load_image(array), quadrant_image(), 0)


def test_blender_pixels_are_flipped_to_top_row_first():
    rgba = np.dstack([quadrant_image().astype(np.float32) / 255, np.ones((48, 64), np.float32)])
    blender_flat = rgba[::-1].ravel()  # Blender stores the bottom row first
    assert_close_image(from_blender_pixels(blender_flat, width=64, height=48), quadrant_image(), 0)
    with pytest.raises(ImageInputError, match="expected 64 x 40 x 4"):
        from_blender_pixels(blender_flat, width=64, height=40)


def text_file_named_png(folder):
    path = folder / "notes.png"
    path.write_text("not pixels")
    return path


def one_pixel_png(folder):
    path = folder / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    return path


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda folder: folder / "missing.png", "not found"),
        (text_file_named_png, "not a readable image"),
        (one_pixel_png, "1 x 1 px"),
        (lambda folder: np.zeros((20, 100, 3), np.uint8), "100 x 20 px"),
        (lambda folder: np.zeros((0, 0, 3), np.uint8), "empty"),
        (lambda folder: np.zeros((40, 40, 2), np.uint8), "shape"),
        (lambda folder: np.zeros((40, 40, 3), np.int64), "dtype"),
    ],
    ids=["missing", "not-an-image", "1x1", "too-small", "empty", "two-channels", "int64"],
)
def test_bad_images_give_one_clear_line(tmp_path, make_source, message):
    with pytest.raises(ImageInputError, match=message) as error:
        load_image(make_source(tmp_path))
    assert "\n" not in str(error.value)


def test_masks_stay_soft_and_must_match_the_image(tmp_path):
    soft = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    Image.fromarray(soft).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", like=quadrant_image())
    assert mask.dtype == np.float32 and mask.shape == (48, 64)
    np.testing.assert_allclose(mask, soft / 255, atol=1e-6)
    with pytest.raises(ImageInputError, match="64 x 48 px but the image is 32 x 48 px"):
        load_mask(tmp_path / "mask.png", like=np.zeros((48, 32, 3), np.uint8))


def test_mask_from_alpha_channel():
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[:, 20:40, 3] = 255
    assert load_mask(rgba).sum() == 48 * 20


# ---------------------------------------------------------------------------------------------------------
# Automatic person masks (mediapipe)


def iou(a, b):
    a, b = a >= 0.5, b >= 0.5
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("number", PHOTO_NUMBERS)
def test_automatic_mask_matches_the_given_mask(shared_data, number):
    rgb = load_image(shared_data / "images" / f"img{number}.png")
    given = load_mask(shared_data / "images" / f"img{number}_mask.png", like=rgb)
    detection = find_person(rgb)
    assert detection.mask.shape == given.shape and detection.mask.dtype == np.float32
    assert iou(detection.mask, given) >= 0.9
    assert detection.landmarks_2d.shape == detection.landmarks_3d.shape == (33, 3)
    # Landmarks in photo pixels: the nose (landmark 0) lies on the person, near the top.
    nose_x, nose_y = detection.landmarks_2d[0, :2]
    assert given[int(nose_y), int(nose_x)] >= 0.5 and nose_y < 0.4 * rgb.shape[0]


def test_person_off_centre_on_a_larger_noisy_photo_is_found_and_centred(shared_data):
    person = load_image(shared_data / "images" / "img1.png")
    person_mask = load_mask(shared_data / "images" / "img1_mask.png", like=person)
    canvas = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    region = (slice(200, 456), slice(360, 616))
    alpha = person_mask[:, :, None]
    canvas[region] = person * alpha + canvas[region] * (1 - alpha)

    detection = find_person(canvas)
    expected = np.zeros(canvas.shape[:2], np.float32)
    expected[region] = person_mask
    assert iou(detection.mask, expected) >= 0.9

    crop = crop_person(canvas, detection.mask)
    rows = np.flatnonzero((crop.mask >= 0.5).any(axis=1))
    cols = np.flatnonzero((crop.mask >= 0.5).any(axis=0))
    assert abs((rows[-1] + 1 - rows[0]) - 233) <= 2  # the paper's person height
    assert abs((rows[0] + rows[-1] + 1) / 2 - 128) <= 1.5 and abs((cols[0] + cols[-1] + 1) / 2 - 128) <= 1.5


def test_find_person_from_several_threads(shared_data):
    photos = [load_image(shared_data / "images" / f"img{number}.png") for number in (1, 2)]
    alone = [find_person(photo).mask for photo in photos]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda photo: find_person(photo).mask, photos))
    for mask_alone, mask_together in zip(alone, together):
        assert (mask_alone == mask_together).all()


@pytest.mark.parametrize(
    "photo",
    [np.full((256, 256, 3), 128, np.uint8), np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)],
    ids=["flat-grey", "noise"],
)
def test_no_person(photo):
    with pytest.raises(NoPersonError, match="no person found in empty.png: .* or pass a mask"):
        find_person(photo, name="empty.png")


def test_only_the_largest_region_is_kept_and_other_people_are_warned_about():
    mask = np.zeros((100, 200), bool)
    mask[10:90, 10:50] = True  # the person
    mask[20:80, 120:150] = True  # someone else
    mask[5:7, 180:182] = True  # a stray blob: dropped silently
    with pytest.warns(UserWarning, match="several people"):
        kept = _largest_region(mask, "two.png")
    assert kept.sum() == 80 * 40 and kept[50, 30]

    mask[20:80, 120:150] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _largest_region(mask, "one.png").sum() == 80 * 40


# ---------------------------------------------------------------------------------------------------------
# The crop


def box_mask(height, width, top, left, box_height, box_width):
    mask = np.zeros((height, width), np.float32)
    mask[top : top + box_height, left : left + box_width] = 1.0
    return mask


def test_crop_recipe_and_exact_pixel_mapping():
    """A 233 px tall box makes the square 256 px: the crop is then the photo shifted, pixel for pixel."""
    photo = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    crop = crop_person(photo, box_mask(300, 400, top=40, left=150, box_height=233, box_width=80))
    assert crop.image.shape == (256, 256, 3) and crop.mask.shape == (256, 256)
    assert crop.transform.scale == 1.0
    # Each crop pixel centre maps back to the centre of the photo pixel it copies.
    rows, columns = np.mgrid[0:256, 0:256]
    photo_x, photo_y = crop.transform.crop_to_photo(np.stack([columns + 0.5, rows + 0.5], axis=-1)).transpose(2, 0, 1)
    assert (crop.image == photo[np.floor(photo_y).astype(int), np.floor(photo_x).astype(int)]).all()
    person_rows = np.flatnonzero(crop.mask.any(axis=1))
    assert person_rows[-1] + 1 - person_rows[0] == 233 and person_rows[0] in (11, 12)


def test_regions_outside_the_photo_are_black_and_the_transform_round_trips():
    """A person at the photo's top-left corner and scaled down: the square sticks out of the photo."""
    photo = np.full((600, 500, 3), 200, np.uint8)
    crop = crop_person(photo, box_mask(600, 500, top=0, left=0, box_height=466, box_width=100))
    assert crop.transform.scale == pytest.approx(256 / 513)
    assert (crop.image[:, :20] == 0).all() and (crop.image[128, 128] == 200).all()

    points = np.random.default_rng(3).uniform(-50, 600, (10, 2))
    np.testing.assert_allclose(crop.transform.crop_to_photo(crop.transform.photo_to_crop(points)), points, atol=1e-9)
    # The person box's corners land where the recipe puts them: 256 / 1.1 = 233 px tall, centred.
    top_left, bottom_right = crop.transform.photo_to_crop([[0, 0], [100, 466]])
    assert bottom_right[1] - top_left[1] == pytest.approx(256 * 466 / 513)
    assert (top_left + bottom_right) / 2 == pytest.approx([128, 128], abs=0.5)

    restored = CropTransform.from_dict(json.loads(json.dumps(crop.transform.to_dict())))
    assert restored == crop.transform


@pytest.mark.parametrize("box_height", [90, 700], ids=["enlarged", "shrunk"])
def test_a_photo_point_lands_where_the_transform_says(box_height):
    """The brightness centroid of a small spot moves exactly as `photo_to_crop` maps its centre."""
    photo = np.zeros((800, 600, 3), np.uint8)
    spot_x, spot_y = 281, 101  # the spot covers pixels 280..282 x 100..102, centre (281.5, 101.5)
    photo[spot_y - 1 : spot_y + 2, spot_x - 1 : spot_x + 2] = 255
    crop = crop_person(photo, box_mask(800, 600, top=50, left=250, box_height=box_height, box_width=60))
    brightness = crop.image[:, :, 0].astype(float)
    rows, columns = np.mgrid[0:256, 0:256] + 0.5
    centroid = [(brightness * columns).sum() / brightness.sum(), (brightness * rows).sum() / brightness.sum()]
    np.testing.assert_allclose(centroid, crop.transform.photo_to_crop([spot_x + 0.5, spot_y + 0.5]), atol=0.05)


def test_crop_errors():
    photo = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ImageInputError, match="empty"):
        crop_person(photo, np.zeros((64, 64), np.float32))
    with pytest.raises(ImageInputError, match="does not match"):
        crop_person(photo, np.zeros((32, 64), np.float32))


# ---------------------------------------------------------------------------------------------------------
# The network tensor


def test_network_image_normalises_and_zeroes_the_background():
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[...] = (10, 120, 250)
    crop = crop_person(photo, box_mask(300, 400, top=40, left=150, box_height=233, box_width=80))
    person = crop.mask >= 0.5

    rgb = network_image(crop, with_mask=False)
    assert rgb.shape == (3, 256, 256) and rgb.dtype == torch.float32
    expected = (np.array([10, 120, 250]) / 255 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    np.testing.assert_allclose(rgb[:, person].mean(dim=1).numpy(), expected, rtol=1e-5)
    assert (rgb[:, ~person] == 0).all()

    bgr_with_mask = network_image(crop, with_mask=True, channel_order="bgr")
    assert bgr_with_mask.shape == (4, 256, 256)
    assert (bgr_with_mask[:3] == rgb.flip(0)).all()
    assert (bgr_with_mask[3].numpy() == person).all()
    with pytest.raises(ValueError, match="'rgb' or 'bgr'"):
        network_image(crop, with_mask=False, channel_order="hsv")


# ---------------------------------------------------------------------------------------------------------
# Memory bounds and messages


def png_header_claiming(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    path.write_bytes(bytes(data))


def test_huge_images_are_refused_before_decoding(tmp_path):
    from lvd_core.inputs.image import MAX_FILE_PIXELS

    png_header_claiming(tmp_path / "bomb.png", 9400, 9400)  # just under Pillow's own limit: 6.6 GB once decoded
    with pytest.raises(ImageInputError, match=rf"bomb.png is 9400 x 9400 px, over {MAX_FILE_PIXELS // 1_000_000} M pixels"):
        load_image(tmp_path / "bomb.png")


def test_large_photos_are_decoded_downscaled(tmp_path):
    from lvd_core.inputs.image import MAX_PIXELS, decoded_size

    Image.new("RGB", (7000, 4000), (200, 100, 50)).save(tmp_path / "large.jpg")
    rgb = load_image(tmp_path / "large.jpg")
    assert rgb.shape == (2000, 3500, 3) and decoded_size((7000, 4000)) == (3500, 2000)
    assert np.abs(rgb[1000, 1000].astype(int) - [200, 100, 50]).max() <= 3
    assert decoded_size((4000, 3000)) == (4000, 3000) and all(w * h <= MAX_PIXELS for w, h in [decoded_size((20001, 9999))])


def test_an_all_black_mask_names_its_file(tmp_path):
    Image.new("L", (64, 64), 0).save(tmp_path / "photo_mask.png")
    with pytest.raises(ImageInputError, match="photo_mask.png marks no person"):
        load_mask(tmp_path / "photo_mask.png")


@pytest.mark.slow
def test_finding_a_person_prints_nothing(shared_data):
    """mediapipe's TensorFlow Lite and absl used to log their set-up on stderr, between the CLI's own lines."""
    import subprocess
    import sys

    script = ("from lvd_core.inputs.image import load_image; from lvd_core.inputs.person_mask import find_person; "
              f"find_person(load_image({str(shared_data / 'images' / 'img2.png')!r}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
