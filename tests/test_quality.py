"""The quality experiment's outline task and its scores (docs/quality.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from cyclegan.data.demo import draw, write_demo_folders, write_outline_folders
from cyclegan.evaluation import load_test_split
from cyclegan.quality import paired_scores

SIZE = 32


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def shapes_mask(image: np.ndarray) -> np.ndarray:
    """Where the image is not the day background: its shapes, outlines included."""
    return (image != np.asarray(draw([], "A", SIZE), dtype=np.int16)).any(axis=-1)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.fixture(scope="module")
def outline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outline")
    write_outline_folders(root, train=6, test=4, size=SIZE)
    return root


def test_outline_task_restyles_the_shapes_and_keeps_the_layout(outline, tmp_path):
    for split, count in (("train", 6), ("test", 4)):
        for domain in "AB":
            files = sorted((outline / f"{split}{domain}").glob("*.png"))
            assert len(files) == count and Image.open(files[0]).size == (SIZE, SIZE)
    write_demo_folders(tmp_path, train=1, test=4, size=SIZE)
    for name in sorted(p.name for p in (outline / "testA").glob("*.png")):
        a, b = pixels(outline / "testA" / name), pixels(outline / "testB" / name)
        changed = (a != b).any(axis=-1)
        # a local change: the shapes and only they, on the same layout
        assert changed.any() and not changed[~shapes_mask(a)].any()
        assert overlap(shapes_mask(a), shapes_mask(b)) > 0.95
        # negative control: the demo's night palette changes the background too, almost everywhere
        demo = (pixels(tmp_path / "testA" / name) != pixels(tmp_path / "testB" / name)).any(axis=-1)
        assert demo.mean() > 0.9 > changed.mean()
    # unpaired for training: a file name does not name the same layout in both domains
    train = [overlap(shapes_mask(pixels(outline / "trainA" / n)), shapes_mask(pixels(outline / "trainB" / n)))
             for n in sorted(p.name for p in (outline / "trainA").glob("*.png"))]
    assert max(train) < 0.95


def test_one_way_runs_are_scored_on_a_to_b_alone(outline):
    split = load_test_split(outline, SIZE)
    truth = [(pixels(outline / "testA" / n), pixels(outline / "testB" / n))
             for n in sorted(p.name for p in (outline / "testA").glob("*.png"))]
    one_way = paired_scores(split, nn.Identity(), None)
    both = paired_scores(split, nn.Identity(), nn.Identity())
    assert set(one_way) == {"AtoB"} and set(both) == {"AtoB", "both"}
    # the identity's L1 is the mean difference of each pair, in levels of 255 (within the rounding of
    # translations to 8 bits, as a user saves them)
    expected = np.mean([np.abs(a - b).mean() for a, b in truth])
    assert one_way["AtoB"]["l1"] == pytest.approx(expected, abs=0.5) and both["AtoB"] == one_way["AtoB"]
    # negative control: a translation that inverts the image scores far worse
    inverted = paired_scores(split, InvertImage(), None)["AtoB"]
    assert inverted["l1"] > one_way["AtoB"]["l1"] + 50 and inverted["psnr"] < one_way["AtoB"]["psnr"]


class InvertImage(nn.Module):
    """A -> B as the photographic negative (images in [-1, 1])."""

    def forward(self, x):
        return -x
