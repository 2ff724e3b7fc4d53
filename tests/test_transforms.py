"""Training preprocessing does what each mode says: sizes, crop ranges, flips, the decode."""

import io
import random

import numpy as np
import pytest
from PIL import Image
from scipy.signal import fftconvolve
from torchvision import transforms

from cyclegan.config import DataConfig, load_config
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream
from cyclegan.data.transforms import train_transform
from cyclegan.errors import ConfigError
from tests.test_stream import write_tar


def texture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth shapes plus grain: every window is different, and JPEG keeps it looking like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    grain = rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int64) + grain, 0, 255).astype(np.uint8))


def find_window(big: np.ndarray, small: np.ndarray) -> tuple[int, int] | None:
    """(top, left) where `small` is exactly a window of `big` (HWC uint8), else None."""
    h, w = small.shape[:2]
    a, b = big.astype(np.float64), small.astype(np.float64)
    ssd = (fftconvolve((a**2).sum(2), np.ones((h, w)), mode="valid")
           - 2 * sum(fftconvolve(a[..., c], b[::-1, ::-1, c], mode="valid") for c in range(3)) + (b**2).sum())
    top, left = np.unravel_index(np.argmin(ssd), ssd.shape)
    return (int(top), int(left)) if np.array_equal(big[top:top + h, left:left + w], small) else None


# The size of a 60 x 44 image before the crop (load 40, crop 32), worked out by hand from what each
# mode says (the official base_dataset for the first two; scale_shorter is ours).
REFERENCE_SIZES = {
    "resize_and_crop": (40, 40),
    "scale_width_and_crop": (40, 32),  # width to 40, height 44 * 40 / 60 = 29.3, raised to the crop
    "scale_shorter_and_crop": (55, 40),  # 44 -> 40, 60 -> 54.5, rounded
    "crop": (60, 44),  # left as it is
}


@pytest.mark.parametrize("mode", sorted(REFERENCE_SIZES))
@pytest.mark.parametrize("flip", [True, False])
def test_each_mode_crops_a_window_of_the_resized_image(mode, flip):
    image = texture(60, 44)
    cfg = DataConfig(load_size=40, crop_size=32, preprocess=mode, flip=flip)
    resized = np.asarray(image.resize(REFERENCE_SIZES[mode], Image.BICUBIC))
    tops, lefts, flipped = set(), set(), 0
    for seed in range(300):
        out = np.asarray(train_transform(image, random.Random(seed), cfg))
        assert out.shape == (32, 32, 3)
        where = find_window(resized, out)
        if where is None:
            where, flipped = find_window(resized, out[:, ::-1]), flipped + 1
        assert where is not None, f"seed {seed}: not a window of the resized image"
        tops.add(where[0])
        lefts.add(where[1])
    height, width = resized.shape[:2]
    assert tops == set(range(height - 32 + 1)) and lefts == set(range(width - 32 + 1)), "every position, no other"
    assert (90 < flipped < 210) if flip else flipped == 0


def test_crop_scales_up_an_image_smaller_than_the_crop():
    image = texture(24, 20)
    out = np.asarray(train_transform(image, random.Random(0), DataConfig(crop_size=32, preprocess="crop", flip=False)))
    assert find_window(np.asarray(image.resize((38, 32), Image.BICUBIC)), out) is not None  # 20 -> 32, 24 -> 38.4


def one_image_stream(tmp_path, image: Image.Image, **data) -> tuple[np.ndarray, Image.Image]:
    """The image as the training loader delivers it (HWC uint8) from a one-sample JPEG shard, and
    the JPEG fully decoded."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    write_tar(tmp_path / "A.tar", [("x.jpg", buffer.getvalue())])
    cfg = DataConfig(train_a=str(tmp_path / "A.tar"), train_b=str(tmp_path / "A.tar"), num_workers=0, flip=False,
                     **data)
    sample = next(iter(UnpairedStream(find_sources(cfg), cfg, batch_size=1, batches_per_epoch=1, seed=0)))
    return sample["A"].permute(1, 2, 0).numpy(), Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_crop_takes_its_window_at_the_images_own_resolution(tmp_path):
    out, decoded = one_image_stream(tmp_path, texture(1024, 768), preprocess="crop", crop_size=256)
    assert find_window(np.asarray(decoded), out) is not None, "the crop must not shrink the image first"


def test_resize_modes_decode_like_the_official_pipeline_unless_asked_otherwise(tmp_path):
    out, decoded = one_image_stream(tmp_path, texture(1024, 1024), load_size=286, crop_size=256)
    official = transforms.Resize([286, 286], transforms.InterpolationMode.BICUBIC)(decoded)
    assert find_window(np.asarray(official), out) is not None
    drafted, _ = one_image_stream(tmp_path, texture(1024, 1024), load_size=286, crop_size=256, jpeg_draft=True)
    assert find_window(np.asarray(official), drafted) is None, "the faster decode is an opt-in that changes pixels"
    with pytest.raises(ConfigError, match="data.jpeg_draft' applies to the resize modes only"):
        load_config(None, ["data.preprocess=crop", "data.jpeg_draft=true"])
