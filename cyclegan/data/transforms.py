"""Training and test preprocessing, as the official code does it, driven by an explicit RNG.

Each sample gets its own `random.Random`, seeded from its position in the stream, so the
crop and flip of a sample never depend on which loader worker drew it or on a resume.
"""

from __future__ import annotations

import random

from PIL import Image

from cyclegan.config import DataConfig


def _resize_for(image: Image.Image, cfg: DataConfig) -> tuple[int, int]:
    """Size before the crop: a square load size, or an aspect-preserving one."""
    width, height = image.size
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


def train_transform(image: Image.Image, rng: random.Random, cfg: DataConfig) -> Image.Image:
    """Resize (bicubic, as the official), random crop to `crop_size`, random horizontal flip."""
    size = _resize_for(image, cfg)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    width, height = image.size
    left = rng.randint(0, width - cfg.crop_size)
    top = rng.randint(0, height - cfg.crop_size)
    image = image.crop((left, top, left + cfg.crop_size, top + cfg.crop_size))
    if cfg.flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def test_transform(image: Image.Image, size: int) -> Image.Image:
    """The official test preprocessing: a bicubic resize to a square."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return image
