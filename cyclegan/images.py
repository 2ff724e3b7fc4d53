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
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from cyclegan.errors import DataError

GREY_TOLERANCE = 2  # levels by which the channels of "grey saved as RGB" may differ (JPEG chroma rounding)
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
    expects; a folder reached a second time, such as a link to an ancestor, is listed once), in a
    stable order."""
    listed = IMAGE_EXTENSIONS | ARRAY_EXTENSIONS
    found, seen = [], {os.path.realpath(root)}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        # folders before links, then by name: the path kept for a folder reached twice is the real one
        ordered = sorted(subfolders, key=lambda s: (os.path.islink(os.path.join(folder, s)), s))
        subfolders.clear()
        for sub in ordered:
            real = os.path.realpath(os.path.join(folder, sub))
            if real not in seen:
                seen.add(real)
                subfolders.append(sub)
        found += [Path(folder, n) for n in names if Path(n).suffix.lower() in listed and Path(folder, n).is_file()]
    return sorted(found)


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


def is_greyscale(rgb: Image.Image) -> bool:
    """Whether an 8-bit RGB image is grey: its channels within `GREY_TOLERANCE` of each other."""
    red, green, blue = rgb.split()
    return all(ImageChops.difference(a, b).getextrema()[1] <= GREY_TOLERANCE for a, b in ((red, green), (green, blue)))


def to_channels(image: Image.Image, channels: int, name: str = "image") -> Image.Image:
    """Any mode as the domain's bands: 8-bit RGB for 3 channels, 8-bit greyscale ("L") for 1.

    A greyscale domain takes greyscale files of any depth, and colour files whose three channels
    are equal (greyscale saved as RGB, within `GREY_TOLERANCE`; their luma is taken); a truly
    coloured image there is refused, not averaged.
    """
    if channels not in (1, 3):
        raise DataError(f"{name}: image files give 1 (greyscale) or 3 (RGB) channels, not {channels}")
    if channels == 1 and image.mode == "L":
        return image
    rgb, _ = to_rgb(image)
    if channels == 3:
        return rgb
    if not is_greyscale(rgb):
        raise ChannelMismatch(f"{name}: a colour image in a 1-channel (greyscale) domain; convert the domain's "
                              "images to greyscale, or give the domain 3 channels (model.input_nc for A, "
                              "model.output_nc for B)")
    return rgb.convert("L")


def hwc_array(image: Image.Image) -> np.ndarray:
    """An 8-bit RGB or greyscale image as a writable H x W x C uint8 array (C = 1 for greyscale)."""
    array = np.array(image, dtype=np.uint8, copy=True)
    return array[:, :, None] if array.ndim == 2 else array


def to_pixels(image: Image.Image, channels: int, name: str = "image") -> np.ndarray:
    """Any mode as an H x W x `channels` uint8 array (see `to_channels`)."""
    return hwc_array(to_channels(image, channels, name))


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
