"""A small synthetic unpaired dataset, drawn procedurally, so the demo downloads nothing.

A scene is a background and a few shapes, each shape of one of four kinds. Domain A draws
scenes in a "day" palette, domain B in a "night" palette, each over a vertical gradient:
translating A to B is a recolouring that a small CycleGAN learns in minutes.
Training scenes of A and B are drawn independently (unpaired). Each test scene is drawn in
both styles under the same file name, so `testB/x.png` is the ground truth of `testA/x.png`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# background top, background bottom, then one colour per shape kind
PALETTES = {
    "A": [(135, 190, 235), (225, 240, 250), (220, 40, 40), (250, 200, 30), (40, 160, 60), (130, 70, 30)],
    "B": [(10, 15, 50), (60, 40, 110), (40, 230, 230), (240, 60, 200), (250, 140, 20), (200, 200, 255)],
}
KINDS = 4
OUTLINE_WIDTH = 2  # pixels, at 64 px: thin next to the smallest shape (a sixth of the side)


def random_scene(rng: random.Random, size: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """A few shapes: (kind, bounding box)."""
    shapes = []
    for _ in range(rng.randint(2, 5)):
        w, h = rng.randint(size // 6, size // 2), rng.randint(size // 6, size // 2)
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        shapes.append((rng.randrange(KINDS), (x, y, x + w, y + h)))
    return shapes


def draw(scene: list[tuple[int, tuple[int, int, int, int]]], style: str, size: int,
         outlined: bool = False) -> Image.Image:
    """The scene in `style`'s palette; `outlined` draws each shape with a lighter fill inside a dark
    outline of its own colour (the outline task's B), leaving the background and layout alone."""
    palette = PALETTES[style]
    image = Image.new("RGB", (size, size))
    pixels = ImageDraw.Draw(image)
    top, bottom = palette[0], palette[1]
    for i in range(size):
        t = i / max(1, size - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        pixels.line([(0, i), (size, i)], fill=colour)
    for kind, box in scene:
        colour = palette[2 + kind]
        paint = {"fill": colour}
        if outlined:
            paint = {"fill": tuple((c + 255) // 2 for c in colour), "outline": tuple(c // 2 for c in colour),
                     "width": OUTLINE_WIDTH}
        if kind == 0:
            pixels.ellipse(box, **paint)
        elif kind == 1:
            pixels.rectangle(box, **paint)
        elif kind == 2:
            x0, y0, x1, y1 = box
            pixels.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], **paint)
        else:
            pixels.rounded_rectangle(box, radius=max(1, (box[2] - box[0]) // 4), **paint)
    return image


def write_demo_folders(root: Path, train: int = 160, test: int = 24, size: int = 64, seed: int = 0) -> None:
    """Write `root/{trainA,trainB,testA,testB}` of PNG scenes."""
    rng = random.Random(seed)
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for style in "AB":
        for i in range(train):
            draw(random_scene(rng, size), style, size).save(root / f"train{style}" / f"scene_{i:04d}.png")
    for i in range(test):
        scene = random_scene(rng, size)
        for style in "AB":
            draw(scene, style, size).save(root / f"test{style}" / f"scene_{i:04d}.png")


def write_outline_folders(root: Path, train: int = 160, test: int = 24, size: int = 64, seed: int = 0) -> None:
    """A local, structure-keeping task with exact ground truth: the demo's day scenes (A) and the
    same kind of scenes with outlined, lighter shapes (B). Training scenes are drawn independently
    for each domain (unpaired); `testB/x` is `testA/x` restyled."""
    rng = random.Random(seed)
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for domain, outlined in (("A", False), ("B", True)):
        for i in range(train):
            draw(random_scene(rng, size), "A", size, outlined).save(root / f"train{domain}" / f"scene_{i:04d}.png")
    for i in range(test):
        scene = random_scene(rng, size)
        for domain, outlined in (("A", False), ("B", True)):
            draw(scene, "A", size, outlined).save(root / f"test{domain}" / f"scene_{i:04d}.png")


def texture(rng: random.Random, size: int) -> Image.Image:
    """Per channel, a few bright blobs of its own size on a dark ground (large in red, middling in
    green, small in blue), with grain. Each channel is known by its blob size and each blob's
    polarity, so the recolouring below (dark blobs on a bright ground) is the only mapping between
    the two domains: no other channel order, and no brightening that keeps the blobs bright."""
    noise = np.random.default_rng(rng.randrange(2**32))
    rows, cols = np.mgrid[0:size, 0:size]
    channels = []
    for radius in (size / 5, size / 8, size / 14):
        field = np.zeros((size, size))
        for _ in range(rng.randint(2, 5)):
            y, x = rng.uniform(0, size), rng.uniform(0, size)
            field = np.maximum(field, np.exp(-((rows - y) ** 2 + (cols - x) ** 2) / (2 * radius**2)))
        channels.append(20 + 210 * field + noise.uniform(-12, 12, (size, size)))
    return Image.fromarray(np.clip(np.stack(channels, axis=-1) + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def recolour(image: Image.Image) -> Image.Image:
    """The second task's exact mapping: invert, and rotate the channels (R <- G <- B <- R)."""
    r, g, b = image.split()
    return Image.merge("RGB", (g, b, r)).point(lambda v: 255 - v)


def write_recolour_folders(root: Path, train: int = 160, test: int = 24, size: int = 64, seed: int = 0) -> None:
    """A second synthetic task with exact ground truth: textures (A) and recoloured textures (B),
    unpaired for training; `testB/x` is the recolouring of `testA/x`."""
    rng = random.Random(seed)
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(train):
        texture(rng, size).save(root / "trainA" / f"texture_{i:04d}.png")
        recolour(texture(rng, size)).save(root / "trainB" / f"texture_{i:04d}.png")
    for i in range(test):
        image = texture(rng, size)
        image.save(root / "testA" / f"texture_{i:04d}.png")
        recolour(image).save(root / "testB" / f"texture_{i:04d}.png")
