"""Turning image files of any common mode into a domain's 8-bit bands (RGB, or greyscale for a
1-channel domain), and those into the networks' [-1, 1] tensors.

Shared by the shard writer, the loader and translation, so every path treats a 16-bit TIFF
or a palette PNG the same way.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cyclegan.data.normalize import type_range
from cyclegan.errors import DataError

GREY_TOLERANCE = 2  # levels by which the channels of "grey saved as RGB" may differ (JPEG chroma rounding)
LUMA_WEIGHTS = np.array([19595, 38470, 7471])  # ITU-R 601-2 in 1/65536ths, as Pillow's convert("L") weighs R, G, B
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
ARRAY_EXTENSIONS = {".npy"}  # H x W x C arrays of any depth and band count (`cyclegan.io.formats`)
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageDecodeError(DataError):
    """A file that is empty, truncated or not an image."""


class ChannelMismatch(DataError):
    """A colour image in a 1-channel (greyscale) domain: not skipped as damaged, but refused,
    since the data and `model.input_nc`/`model.output_nc` disagree."""


def list_images(root: Path) -> list[Path]:
    """Image files and `.npy` arrays under `root` (recursively, into linked folders too, as a user
    expects), in a stable order. A folder reached a second time is listed once: by its real path
    when it lies inside `root` (a link to it is passed over), else by the first link in name order.
    A folder that cannot be read is an error, not a silent gap in the data."""
    if not root.is_dir():
        return []
    listed = IMAGE_EXTENSIONS | ARRAY_EXTENSIONS
    inside = os.path.join(os.path.realpath(root), "")
    found, seen = [], {os.path.realpath(root)}
    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=_unreadable):
        kept = []
        for sub in sorted(subfolders):
            path = os.path.join(folder, sub)
            real = os.path.realpath(path)
            if real not in seen and not (os.path.islink(path) and real.startswith(inside)):
                seen.add(real)
                kept.append(sub)
        subfolders[:] = kept
        found += [Path(folder, n) for n in names if Path(n).suffix.lower() in listed and Path(folder, n).is_file()]
    return sorted(found)


def _unreadable(err: OSError) -> None:
    """os.walk's error hook: by default it passes over a folder it cannot read, and its images with it."""
    raise DataError(f"cannot read folder {err.filename} ({err.strerror}): its images would be left out")


def open_image(source: Path | bytes, name: str | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open and fully decode an image, so that truncated files fail here and not later, turned
    upright (see `upright`).

    `draft` lets a JPEG decode at a reduced scale that is still at least that size.
    """
    label = name or str(source)
    if isinstance(source, Path):
        if source.stat().st_size == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        stream = source.open("rb")
    else:
        if len(source) == 0:
            raise ImageDecodeError(f"{label}: empty image (0 bytes)")
        stream = io.BytesIO(source)
    with stream:
        try:
            image = Image.open(stream)
            if draft and image.format == "JPEG":
                image.draft("RGB", draft)
            image.load()
            return upright(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageDecodeError(f"{label}: cannot be decoded ({err})") from None


def upright(image: Image.Image) -> Image.Image:
    """The image as viewers show it, turned by its EXIF orientation (a phone photo's, say), in
    place; the official code ignores the orientation."""
    ImageOps.exif_transpose(image, in_place=True)
    return image


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Convert any PIL mode to 8-bit RGB; return the image and the original mode if it changed.

    16-bit and 32-bit greyscale is scaled to 8 bits (not clipped, as PIL's own conversion
    does); alpha is dropped, as the official code does; palettes and CMYK are expanded.
    """
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in HIGH_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        elif mode.startswith("I;16") or array.max(initial=0) > 255:
            top = 65535.0
        else:
            top = 255.0
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB"), mode
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB"), mode


def is_grey(array: np.ndarray) -> bool:
    """Whether a 3-band H x W x 3 array is grey: its bands within `GREY_TOLERANCE` levels of 255 of
    each other (of the type's range for integers, of the image's own range for floats)."""
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        low, high = type_range(array.dtype)
    else:
        low, high = float(values.min()), float(values.max())
    spread = max(np.abs(values[:, :, 0] - values[:, :, 1]).max(), np.abs(values[:, :, 1] - values[:, :, 2]).max())
    return spread <= GREY_TOLERANCE * (high - low) / 255


def luma(array: np.ndarray) -> np.ndarray:
    """A grey H x W x 3 array as H x W x 1 of its type: its luma, by the weights and the rounding of
    Pillow's convert("L"), so that an 8-bit image gives what the official path takes on either path."""
    if np.issubdtype(array.dtype, np.integer):
        return ((array.astype(np.int64) @ LUMA_WEIGHTS + 0x8000) >> 16).astype(array.dtype)[:, :, None]
    return (array.astype(np.float64) @ (LUMA_WEIGHTS / 65536)).astype(array.dtype)[:, :, None]


def band_mismatch(name: str, bands: int, channels: int, image: bool = True) -> ChannelMismatch:
    """The one message for a sample of other bands than its domain takes (`image`: a colour image
    rather than an array of bands, when 3 meet 1)."""
    if image and (bands, channels) == (3, 1):
        what = ("a colour image in a 1-channel (greyscale) domain; convert the domain's images to greyscale, or give "
                "the domain 3 channels")
    else:
        what = f"has {bands} band(s), but its domain has {channels}"
    return ChannelMismatch(f"{name}: {what} (model.input_nc for A, model.output_nc for B)")


def to_channels(image: Image.Image, channels: int, name: str = "image") -> Image.Image:
    """Any mode as the domain's bands: 8-bit RGB for 3 channels, 8-bit greyscale ("L") for 1.

    A greyscale domain takes greyscale files of any depth, and colour files whose three channels
    are equal (greyscale saved as RGB, within `GREY_TOLERANCE`; their luma is taken, as `luma`
    takes it on the deep path); a truly coloured image there is refused, not averaged.
    """
    if channels not in (1, 3):
        raise DataError(f"{name}: image files give 1 (greyscale) or 3 (RGB) channels, not {channels}")
    if channels == 1 and image.mode == "L":
        return image
    rgb, _ = to_rgb(image)
    if channels == 3:
        return rgb
    if not is_grey(hwc_array(rgb)):
        raise band_mismatch(name, 3, 1)
    return rgb.convert("L")


def hwc_array(image: Image.Image) -> np.ndarray:
    """An 8-bit RGB or greyscale image as a writable H x W x C uint8 array (C = 1 for greyscale)."""
    array = np.array(image, dtype=np.uint8, copy=True)
    return array[:, :, None] if array.ndim == 2 else array


def to_image(pixels: np.ndarray) -> Image.Image:
    """An H x W x C uint8 array as a PIL image: greyscale for one channel, RGB for three."""
    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB or greyscale image -> CHW uint8 tensor: a quarter of the bytes of floats between
    processes."""
    return torch.from_numpy(hwc_array(image)).permute(2, 0, 1)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1], with the official arithmetic (ToTensor, then Normalize(0.5, 0.5)).

    The floats are of torch's default dtype, as for any tensor made without one (float32 unless
    set otherwise, as float64 reference runs do).
    """
    return pixels.to(torch.get_default_dtype()).div(255.0).sub(0.5).div(0.5)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] tensors -> uint8 of the same layout, as the official `(y + 1) / 2 * 255` cast."""
    return ((images.float() + 1.0) / 2.0 * 255.0).clamp(0, 255).to(torch.uint8)
