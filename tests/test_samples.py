"""One door between stored samples and the networks (`cyclegan.io.samples`): the Translator API
reads a PIL image or an array as `cyclegan-translate` reads the file, with the same settings,
conversions and checks; EXIF orientation is applied wherever images are read."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.data.shards import write_shards
from cyclegan.data.stream import decode
from cyclegan.errors import DataError, UserError
from cyclegan.evaluation import load_test_split
from cyclegan.io.samples import Decoding, read_sample
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator
from cyclegan.translate import Translator, core
from cyclegan.translate.files import translate_files


class Identity(torch.nn.Module):
    """A "generator" that returns its input."""

    spec = GeneratorSpec(3, 3, ngf=4, n_blocks=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def generator(path, in_channels: int = 3, out_channels: int = 3):
    torch.manual_seed(0)
    export_generator(ResnetGenerator(GeneratorSpec(in_channels, out_channels, ngf=8, n_blocks=1)), path)
    return path


def low_contrast(width: int = 40, height: int = 32) -> np.ndarray:
    """An RGB image in levels 100..150, which a percentile normalisation stretches a lot."""
    return np.random.default_rng(1).integers(100, 151, (height, width, 3), dtype=np.uint8)


def test_the_api_reads_images_and_arrays_as_the_cli_reads_their_file(tmp_path):
    weights = generator(tmp_path / "g.safetensors")
    translator = Translator.from_pretrained(weights, device="cpu", precision="fp32", normalize="percentile:1,99")
    pixels = low_contrast()
    (tmp_path / "in").mkdir()
    Image.fromarray(pixels).save(tmp_path / "in" / "x.png")
    translate_files(translator, tmp_path / "in", tmp_path / "out")
    cli = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert np.array_equal(np.asarray(translator(Image.open(tmp_path / "in" / "x.png"))), cli)
    assert np.array_equal(translator(pixels), cli)
    official = Translator.from_pretrained(weights, device="cpu", precision="fp32")
    assert np.abs(np.asarray(official(Image.fromarray(pixels))).astype(int) - cli).max() > 10, \
        "the normalisation matters here: the check above could not pass by ignoring it"


def test_a_greyscale_array_is_converted_as_a_greyscale_image_is(tmp_path):
    translator = Translator.from_pretrained(generator(tmp_path / "g.safetensors"), device="cpu", precision="fp32")
    grey = low_contrast()[:, :, 0]
    from_image = np.asarray(translator(Image.fromarray(grey, mode="L")))
    assert from_image.shape == (32, 40, 3)
    assert np.array_equal(translator(grey), from_image)
    assert np.array_equal(translator(grey[:, :, None]), from_image)


def test_the_api_checks_its_inputs_as_the_cli_does(tmp_path, monkeypatch):
    translator = Translator.from_pretrained(generator(tmp_path / "g.safetensors"), device="cpu", precision="fp32")
    nan = np.zeros((16, 16, 3), dtype=np.float32)
    nan[3, 4, 1] = np.nan
    with pytest.raises(DataError, match="holds NaN or infinite values"):
        Translator.from_pretrained(tmp_path / "g.safetensors", device="cpu", normalize="range:0,1")(nan)
    with pytest.raises(DataError, match="holds NaN or infinite values"):
        translator(torch.from_numpy(nan).permute(2, 0, 1))
    with pytest.raises(UserError, match=r"values in \[-1, 1\], not 2 .. 2"):
        translator(torch.full((3, 16, 16), 2.0))
    tensor = torch.linspace(-1, 1, 3 * 16 * 20).reshape(1, 3, 16, 20)
    half = translator(tensor.half())
    assert half.dtype == torch.float16 and torch.equal(half, translator(tensor.half().float()).half()), \
        "float16 is computed in float32 and given back as float16"

    tiled = []
    monkeypatch.setattr(core, "translate_tiled", lambda net, pixels, tile, *rest: tiled.append(tile) or pixels)
    Translator.from_pretrained(tmp_path / "g.safetensors", device="cpu", precision="fp32", tile=8)(tensor)
    assert tiled == [8], "a tensor takes tile= as every other input"


def test_messages_name_the_settings_as_the_caller_gave_them(tmp_path):
    weights = generator(tmp_path / "g.safetensors")
    floats = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    with pytest.raises(DataError) as reading:
        Translator.from_pretrained(weights, device="cpu")(floats)
    assert "set normalize to range" in str(reading.value) and "data.normalize" not in str(reading.value)
    with pytest.raises(UserError) as writing:
        Translator.from_pretrained(weights, device="cpu", normalize="range:0,1", normalize_output="dtype")(floats)
    assert "give normalize_output range" in str(writing.value) and "--normalize-output" not in str(writing.value)
    with pytest.raises(UserError, match="^normalize_output: 'window' is not one of"):
        Translator.from_pretrained(weights, device="cpu", normalize_output="window")
    with pytest.raises(UserError, match="^--normalize-output: 'window' is not one of"):
        Translator.from_pretrained(weights, device="cpu", normalize_output="window", names=core.CLI_NAMES)


def phone_photo(path) -> None:
    """A JPEG stored landscape (red left half, blue right) whose EXIF says: turn 90 degrees
    clockwise to show it (Orientation 6, as phones write portrait photos)."""
    pixels = np.zeros((32, 48, 3), dtype=np.uint8)
    pixels[:, :24, 0] = pixels[:, 24:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def is_upright(pixels: np.ndarray) -> bool:
    """Portrait, red on top and blue below: the photo as viewers show it."""
    top, bottom = pixels[: pixels.shape[0] // 4].astype(int), pixels[-pixels.shape[0] // 4:].astype(int)
    return top[..., 0].mean() > 200 > top[..., 2].mean() and bottom[..., 2].mean() > 200 > bottom[..., 0].mean()


def test_exif_orientation_is_applied_wherever_images_are_read(tmp_path):
    for folder in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        phone_photo(tmp_path / "data" / folder / "photo.jpg")
    sample = read_sample(tmp_path / "data" / "trainA" / "photo.jpg")
    assert sample.pixels.size == (32, 48) and is_upright(sample.array())
    assert is_upright(read_sample(Image.open(tmp_path / "data" / "trainA" / "photo.jpg")).array()), "the API's"

    write_shards({("train", "A"): tmp_path / "data" / "trainA"}, tmp_path / "shards", workers=1)
    with tarfile.open(tmp_path / "shards" / "train" / "A-000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith((".jpg", ".png")))
        stored = {"__key__": "photo", member.name.split(".", 1)[1]: tar.extractfile(member).read()}
    assert is_upright(np.asarray(decode(stored, Decoding()))), "training sees the shard's photo upright"

    split = load_test_split(tmp_path / "data", 48)
    unit = split.images_a[0].permute(1, 2, 0).numpy()
    assert is_upright(((unit + 1) * 127.5).astype(np.uint8)), "evaluation folders"

    translate_files(Translator(Identity(), torch.device("cpu"), tile=0), tmp_path / "data" / "testA", tmp_path / "out")
    assert is_upright(np.asarray(Image.open(tmp_path / "out" / "photo.png"))), "translation"


def test_every_kind_of_source_gives_the_same_input(tmp_path):
    pixels = low_contrast()
    Image.fromarray(pixels).save(tmp_path / "x.png")
    expected = read_sample(tmp_path / "x.png").array()
    assert np.array_equal(expected, pixels)
    for source in ((tmp_path / "x.png").read_bytes(), {"__key__": "x", "png": (tmp_path / "x.png").read_bytes()},
                   Image.open(tmp_path / "x.png"), pixels):
        assert np.array_equal(read_sample(source).array(), expected), type(source)
    deep = Decoding.of(3, "percentile:1,99")
    unit = read_sample(pixels, deep).array()
    assert unit.dtype == np.float32 and unit.min() == -1 and unit.max() == 1
    for source in ((tmp_path / "x.png").read_bytes(), Image.open(tmp_path / "x.png")):
        assert np.array_equal(read_sample(source, deep).array(), unit)
    buffer = io.BytesIO()
    np.save(buffer, pixels)
    assert np.array_equal(read_sample(buffer.getvalue(), deep).array(), unit), ".npy bytes, by their header"
