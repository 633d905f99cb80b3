"""Photos in, network-ready person crops out: loading, masks, the paper's square crop, normalisation.

Pixel coordinates everywhere: (x, y) in pixels, x to the right, y down, origin at the top-left corner of the
top-left pixel, so the pixel in row i, column j covers [j, j+1) x [i, i+1) and has its centre at (j+0.5, i+0.5).
Automatic person masks (mediapipe) live in `person_mask.py`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MASK_SUFFIX = "_mask"  # photo.png may come with its person mask photo_mask.png
MIN_SIDE_PX = 32
# Photos over this many pixels are decoded downscaled (JPEG: while decoding) by an integer factor: the network
# sees a 256 px crop, and a full decode of a huge image (a 190 KB PNG can hold 89 M pixels) takes gigabytes.
MAX_PIXELS = 24_000_000
# Files this large are refused before decoding unless their format decodes downscaled (JPEG).
MAX_FILE_PIXELS = 2 * MAX_PIXELS
NETWORK_SIZE_PX = 256
# The paper's crop: 1.1 x the larger side of the person box, so the person is about 256 / 1.1 = 233 px tall.
CROP_MARGIN = 1.1
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageInputError(ValueError):
    """An image or mask that cannot be used; the message is one line saying what was expected."""


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_image(source: str | Path | np.ndarray) -> np.ndarray:
    """An image file (PNG / JPEG / WebP / ...) or array -> (H, W, 3) uint8 RGB.

    Files get their EXIF orientation applied. Arrays may be (H, W), (H, W, 3) or (H, W, 4) of uint8, uint16 or
    float in [0, 1]. Transparent pixels are composited on black (the network's background).
    """
    if isinstance(source, np.ndarray):
        array, name = source, "the image array"
    else:
        array, name = _read_image_file(source), str(source)
    return _check_size(_to_rgb_uint8(array, name), name)


def from_blender_pixels(flat: np.ndarray, width: int, height: int) -> np.ndarray:
    """Blender's `Image.pixels` (flat float RGBA, bottom row first) -> (H, W, 3) uint8 RGB, top row first.

    The values are used as stored: byte images (PNG / JPEG) give their sRGB values, as the network expects.
    """
    flat = np.asarray(flat, dtype=np.float32)
    if flat.size != width * height * 4:
        raise ImageInputError(
            f"Blender pixels: expected {width} x {height} x 4 = {width * height * 4} floats, got {flat.size}"
        )
    return load_image(flat.reshape(height, width, 4)[::-1])


def load_mask(source: str | Path | np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """A person mask file or array -> (H, W) float32 in [0, 1] (1 = person); soft 8-bit masks are kept soft.

    A mask with colour channels uses its alpha when it has transparency, else the mean of its colours.
    With `like` (the image), the mask must have the image's height and width.
    """
    if isinstance(source, np.ndarray):
        array, name = source, "the mask array"
    else:
        array, name = _read_image_file(source), str(source)
    if array.size == 0:
        raise ImageInputError(f"{name} is empty: expected an (H, W) mask")
    mask = _single_channel(_to_unit_float(array, name), name)
    if not (mask >= 0.5).any():
        raise ImageInputError(f"{name} marks no person (every value is under half): expected white (1) on the person")
    if like is not None and mask.shape != like.shape[:2]:
        raise ImageInputError(
            f"{name} is {mask.shape[1]} x {mask.shape[0]} px but the image is "
            f"{like.shape[1]} x {like.shape[0]} px: give the mask of this image"
        )
    return mask


def _read_image_file(path: str | Path) -> np.ndarray:
    """The file's pixels upright (EXIF orientation applied), in the file's own bit depth, downscaled to at most
    MAX_PIXELS (`decoded_size`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # sizes are bounded here
            image = Image.open(path)
        with image:
            size = decoded_size(image.size)
            if size != image.size:
                if image.format != "JPEG" and image.size[0] * image.size[1] > MAX_FILE_PIXELS:
                    raise ImageInputError(f"{path} is {image.size[0]} x {image.size[1]} px, over {MAX_FILE_PIXELS // 1_000_000} M "
                                          "pixels: downscale it (the network sees a 256 px crop)")  # fmt: skip
                image.draft(image.mode, size)  # JPEG: decoded at 1/2, 1/4 or 1/8 scale, no larger than needed
                image = image.resize(size, Image.Resampling.BOX)
            image = ImageOps.exif_transpose(image)
            return np.array(_pillow_mode_numpy_understands(image))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ImageInputError(f"{path} is not a readable image (PNG, JPEG or WebP expected): {error}") from None


def decoded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) an image of this size is decoded at: divided by the smallest whole factor that brings it
    to MAX_PIXELS (a photo and its mask of the same size stay the same size)."""
    width, height = size
    factor = 1
    while (width // factor) * (height // factor) > MAX_PIXELS:
        factor += 1
    return width // factor, height // factor


def _pillow_mode_numpy_understands(image: Image.Image) -> Image.Image:
    if image.mode in ("L", "RGB", "RGBA", "I;16"):
        return image
    if image.mode == "I":  # 16-bit PNGs may open as 32-bit integers
        return image.convert("I;16")
    if image.mode in ("P", "PA", "LA", "1") or "transparency" in image.info:
        return image.convert("RGBA")  # keeps palette transparency
    return image.convert("RGB")  # CMYK, YCbCr, 16-bit colour, ...


def _to_unit_float(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 / uint16 / bool / float in [0, 1] -> float32 in [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageInputError(f"{name} has NaN or infinite values: expected floats in [0, 1]")
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    raise ImageInputError(f"{name} has dtype {array.dtype}: expected uint8, uint16 or float in [0, 1]")


def _to_rgb_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.size == 0:
        raise ImageInputError(f"{name} is empty: expected (H, W), (H, W, 3) or (H, W, 4) pixels")
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    unit = _to_unit_float(array, name)
    if unit.ndim == 2:
        unit = np.repeat(unit[:, :, None], 3, axis=2)
    elif unit.ndim == 3 and unit.shape[2] == 4:
        unit = unit[:, :, :3] * unit[:, :, 3:]  # straight alpha over black
    elif not (unit.ndim == 3 and unit.shape[2] == 3):
        raise ImageInputError(f"{name} has shape {array.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    return np.round(unit * 255.0).astype(np.uint8)


def _single_channel(unit: np.ndarray, name: str) -> np.ndarray:
    if unit.ndim == 2:
        return unit
    if unit.ndim == 3 and unit.shape[2] == 4 and unit[:, :, 3].min() < 1.0:
        return np.ascontiguousarray(unit[:, :, 3])
    if unit.ndim == 3 and unit.shape[2] in (1, 3, 4):
        return unit[:, :, :3].mean(axis=2, dtype=np.float32)
    raise ImageInputError(f"{name} has shape {unit.shape}: expected an (H, W) mask")


def _check_size(rgb: np.ndarray, name: str) -> np.ndarray:
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE_PX:
        raise ImageInputError(
            f"{name} is {width} x {height} px: expected at least {MIN_SIDE_PX} px on each side, with a person in it"
        )
    return rgb


# ---------------------------------------------------------------------------------------------------------
# The paper's square crop


@dataclass(frozen=True)
class CropTransform:
    """Maps pixel coordinates between the photo and the crop: crop = (photo - origin) * scale."""

    origin_x: float  # photo pixel coordinates of the crop's top-left corner
    origin_y: float
    scale: float  # crop pixels per photo pixel
    size: int  # the crop's side in pixels

    def photo_to_crop(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) photo pixel coordinates -> crop pixel coordinates."""
        return (np.asarray(uv, dtype=np.float64) - self._origin) * self.scale

    def crop_to_photo(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) crop pixel coordinates -> photo pixel coordinates."""
        return np.asarray(uv, dtype=np.float64) / self.scale + self._origin

    @property
    def _origin(self) -> np.ndarray:
        return np.array([self.origin_x, self.origin_y])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CropTransform:
        return cls(float(data["origin_x"]), float(data["origin_y"]), float(data["scale"]), int(data["size"]))


@dataclass(frozen=True)
class PersonCrop:
    image: np.ndarray  # (size, size, 3) uint8 RGB, black outside the photo
    mask: np.ndarray  # (size, size) float32 in [0, 1]
    transform: CropTransform


def crop_person(
    rgb: np.ndarray, mask: np.ndarray, size: int = NETWORK_SIZE_PX, margin: float = CROP_MARGIN
) -> PersonCrop:
    """The paper's crop: a square `margin` x the larger side of the mask's box, centred on the box, on black,
    resized to size x size px."""
    if mask.shape != rgb.shape[:2]:
        raise ImageInputError(f"mask shape {mask.shape} does not match the image's {rgb.shape[:2]}")
    if margin <= 0:
        raise ImageInputError(f"margin {margin}: expected a positive factor such as {CROP_MARGIN}")
    left, top, side = _square_around_person(mask, margin)
    transform = CropTransform(float(left), float(top), size / side, size)
    image = _resize_square(_cut_square(rgb, left, top, side), size)
    person = _resize_square(_cut_square(mask.astype(np.float32), left, top, side), size)
    return PersonCrop(image, np.clip(person, 0.0, 1.0), transform)


def _square_around_person(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(left, top, side) of the crop square in whole photo pixels, so that resizing maps pixels exactly."""
    rows = np.flatnonzero((mask >= 0.5).any(axis=1))
    cols = np.flatnonzero((mask >= 0.5).any(axis=0))
    if rows.size == 0:
        raise ImageInputError("the person mask is empty: expected mask values >= 0.5 on the person")
    box_width, box_height = cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]
    centre_x, centre_y = (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2
    side = max(1, int(round(margin * max(box_width, box_height))))
    return int(round(centre_x - side / 2)), int(round(centre_y - side / 2)), side


def _cut_square(pixels: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """The side x side square at (left, top); parts outside the photo are 0 (black)."""
    square = np.zeros((side, side) + pixels.shape[2:], dtype=pixels.dtype)
    height, width = pixels.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x1 > x0 and y1 > y0:
        square[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1]
    return square


def _resize_square(square: np.ndarray, size: int) -> np.ndarray:
    # Area averaging when shrinking avoids aliasing on large photos.
    interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


# ---------------------------------------------------------------------------------------------------------
# Network input


def network_image(crop: PersonCrop, *, with_mask: bool, channel_order: str = "rgb") -> torch.Tensor:
    """(3 or 4, 256, 256) float32: ImageNet-normalised colours, 0 on the background (mask < 0.5), and with
    `with_mask` the binary mask as a 4th channel (it marks exactly the pixels that keep their colour)."""
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order {channel_order!r}: expected 'rgb' or 'bgr'")
    person = crop.mask >= 0.5
    colours = (crop.image.astype(np.float32) / 255.0 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    colours[~person] = 0.0
    if channel_order == "bgr":  # the training loaders fed BGR (see the reference notes)
        colours = colours[:, :, ::-1]
    channels = [colours.transpose(2, 0, 1)]
    if with_mask:
        channels.append(person[None].astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(channels, axis=0)))


def given_mask(photo: Path) -> Path | None:
    """The person mask that comes with a photo, <stem>_mask.<any photo extension> beside it (the convention of
    the sample photos); None: the person is found automatically."""
    for extension in PHOTO_EXTENSIONS:
        candidate = photo.with_name(f"{photo.stem}{MASK_SUFFIX}{extension}")
        if candidate.is_file():
            return candidate
    return None
