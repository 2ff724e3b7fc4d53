"""Training and test preprocessing, as the official code does it, driven by an explicit RNG.

Each sample gets its own `random.Random`, seeded from its position in the stream, so the
crop and flip of a sample never depend on which loader worker drew it or on a resume.

A sample is a PIL image (8-bit data, the official path) or an H x W x C float32 array in
[-1, 1] (deeper data and any band count): the same draws give both the same geometry, and
arrays are resized band by band with PIL's own bicubic kernel in 32-bit float.
"""

from __future__ import annotations

import random
from typing import TypeVar

import numpy as np
from PIL import Image

from cyclegan.config import DataConfig

Sample = TypeVar("Sample", Image.Image, np.ndarray)


def size_of(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """(width, height), as PIL gives it."""
    return image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])


def resize_bands(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """An H x W x C array resized to (width, height) band by band in 32-bit float, by a PIL filter
    (the same kernel as for 8-bit images); float32 out."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, c], dtype=np.float32), mode="F")
                                .resize(size, resample)) for c in range(array.shape[2])], axis=2)


def resize(image: Sample, size: tuple[int, int]) -> Sample:
    """Bicubic resize to (width, height); arrays stay within [-1, 1], as 8-bit pixels stay in 0..255."""
    if size == size_of(image):
        return image
    if isinstance(image, Image.Image):
        return image.resize(size, Image.BICUBIC)
    return np.clip(resize_bands(image, size, Image.BICUBIC), -1.0, 1.0)


def _resize_for(image: Image.Image | np.ndarray, cfg: DataConfig) -> tuple[int, int]:
    """Size before the crop: a square load size, or an aspect-preserving one."""
    width, height = size_of(image)
    load, crop = cfg.load_size, cfg.crop_size
    if cfg.preprocess == "resize_and_crop":
        return load, load
    if cfg.preprocess == "scale_width_and_crop":  # the official __scale_width, truncation included
        return load, int(max(load * height / width, crop))
    if cfg.preprocess == "scale_shorter_and_crop":
        scale = load / min(width, height)
        return max(crop, round(width * scale)), max(crop, round(height * scale))
    scale = max(1.0, crop / min(width, height))  # "crop": no resize unless the image is too small
    return max(crop, round(width * scale)), max(crop, round(height * scale))


def draft_size(cfg: DataConfig) -> tuple[int, int] | None:
    """With `data.jpeg_draft`, a size JPEG decoding may shrink to for free (DCT scaling) without
    going below the resize target; otherwise None: a full decode, as the official pipeline."""
    return (cfg.load_size, cfg.load_size) if cfg.jpeg_draft else None


def train_transform(image: Sample, rng: random.Random, cfg: DataConfig) -> Sample:
    """Resize (bicubic, as the official), random crop to `crop_size`, random horizontal flip."""
    image = resize(image, _resize_for(image, cfg))
    width, height = size_of(image)
    left = rng.randint(0, width - cfg.crop_size)
    top = rng.randint(0, height - cfg.crop_size)
    flip = cfg.flip and rng.random() < 0.5
    if isinstance(image, np.ndarray):
        image = image[top:top + cfg.crop_size, left:left + cfg.crop_size]
        return np.ascontiguousarray(image[:, ::-1] if flip else image)
    image = image.crop((left, top, left + cfg.crop_size, top + cfg.crop_size))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if flip else image


def test_transform(image: Sample, size: int) -> Sample:
    """The official test preprocessing: a bicubic resize to a square."""
    return resize(image, (size, size))
