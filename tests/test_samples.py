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

from cyclegan.build import batch_to_device
from cyclegan.config import DataConfig
from cyclegan.data.normalize import Normalize
from cyclegan.data.shards import write_shards
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, decode
from cyclegan.data import transforms
from cyclegan.errors import DataError, UserError
from cyclegan.evaluation import load_test_split
from cyclegan.images import ChannelMismatch
from cyclegan.io.formats import encode
from cyclegan.io.samples import Decoding, as_tensor, as_unit, read_sample, to_unit_tensor
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator
from cyclegan.translate import Translator, core
from cyclegan.translate.files import translate_files
from cyclegan.translate.shards import translate_shards
from cyclegan.translate.tiles import ImagePlane


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


def test_photos_of_one_stored_size_but_other_orientations_translate_in_one_batch(tmp_path):
    """The batches are grouped by the size the header gives: the size as read, upright."""
    (tmp_path / "in").mkdir()
    pixels = np.zeros((32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in" / "landscape.jpg")
    phone_photo(tmp_path / "in" / "portrait.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "in" / "portrait.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "in" / "portrait.tif", exif=exif)
    report = translate_files(Translator(Identity(), torch.device("cpu"), tile=0), tmp_path / "in", tmp_path / "out",
                             batch_size=4)
    assert report.written == 4 and not report.skipped
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"landscape.png": (48, 32), "portrait.jpg.png": (32, 48), "portrait.png": (32, 48),
                     "portrait.tif.png": (32, 48)}


def test_grey_saved_as_rgb_takes_one_rule_on_both_paths():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 254, (12, 10), dtype=np.uint8)
    nearly = np.stack([grey, grey + rng.integers(0, 3, grey.shape, dtype=np.uint8), grey], axis=-1)  # JPEG-like
    official = read_sample(nearly, Decoding(1))
    assert not official.deep
    deep = read_sample(nearly, Decoding.of(1, "range:0,255"))
    assert deep.deep and np.array_equal(deep.values, official.array()), "the luma, as the official path takes it"
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    messages = []
    for array in (colour, colour.astype(np.uint16) * 257):  # 8-bit, and deep
        with pytest.raises(ChannelMismatch) as info:
            read_sample(array, Decoding(1), "x.png")
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "model.input_nc for A" in messages[0]


def test_inputs_reach_the_network_in_its_dtype_on_every_path():
    """One rule (uint8 normalised, floats cast to torch's default dtype) for training batches,
    evaluation, translation and tiles: under float64, as reference runs use, deep inputs too."""
    pixels = low_contrast(16, 12)
    unit = read_sample(pixels, Decoding.of(3, "percentile:1,99")).array()
    torch.set_default_dtype(torch.float64)
    try:
        net = ResnetGenerator(GeneratorSpec(3, 3, ngf=4, n_blocks=1))
        for normalize in ("dtype", "percentile:1,99"):
            out = Translator(net, torch.device("cpu"), tile=0, normalize=Normalize.parse(normalize))(pixels)
            assert out.shape == pixels.shape and out.dtype == np.uint8
        for stored in (pixels, unit):
            chw = torch.from_numpy(np.ascontiguousarray(stored.transpose(2, 0, 1)))
            expected = to_unit_tensor(stored if stored.dtype != np.uint8 else Image.fromarray(stored))
            on_device = batch_to_device({"A": chw[None], "B": chw[None]}, torch.device("cpu"), False)["A"][0]
            assert expected.dtype == on_device.dtype == torch.float64 and torch.equal(on_device, expected)
            region = torch.from_numpy(ImagePlane(stored).region(0, 12, 0, 16)).permute(2, 0, 1)
            assert torch.equal(region, expected)
    finally:
        torch.set_default_dtype(torch.float32)


def test_an_untiled_tensor_stays_on_its_device(tmp_path, monkeypatch):
    translator = Translator.from_pretrained(generator(tmp_path / "g.safetensors"), device="cpu", tile=0)
    tensor = torch.linspace(-1, 1, 3 * 16 * 20).reshape(1, 3, 16, 20)
    expected = torch.from_numpy(translator.translate([tensor[0].permute(1, 2, 0).numpy()])[0]).permute(2, 0, 1)
    monkeypatch.setattr(Translator, "translate", lambda *_: pytest.fail("an untiled tensor went through the host"))
    assert torch.equal(translator(tensor)[0], expected)
    assert torch.equal(translator(tensor.clone().requires_grad_())[0], expected), "no numpy, so no grad trouble"


def test_the_api_says_what_to_pass_instead(tmp_path):
    weights = generator(tmp_path / "g.safetensors")
    wide = Translator.from_pretrained(weights, device="cpu", normalize="range:0,255", normalize_output="range:-1000,1000")
    assert wide(low_contrast()).dtype == np.float32, "a window no uint8 holds comes back as float32"
    with pytest.raises(UserError, match="3 band.s. of float32, which no PIL image holds: pass the image as a numpy"):
        wide(Image.fromarray(low_contrast()))
    floats = Translator.from_pretrained(weights, device="cpu", normalize="range:0,1")
    assert floats(np.full((16, 16, 3), 0.5)).dtype == np.float32, "float64 is read, and comes back, as float32"
    with pytest.raises(UserError, match="^precision must be one of auto, fp32, bf16, not 'fast'"):
        Translator.from_pretrained(weights, device="cpu", precision="fast")
    with pytest.raises(UserError, match="^--precision must be one of"):
        Translator.from_pretrained(weights, device="cpu", precision="fast", names=core.CLI_NAMES)


class Recording(torch.nn.Module):
    """A small generator that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = ResnetGenerator(GeneratorSpec(3, 3, ngf=4, n_blocks=1))
        self.spec, self.inputs = self.net.spec, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs += list(x.detach().clone())
        return self.net(x)


def test_a_domain_of_8_and_16_bit_images_is_read_alike_by_every_path(tmp_path):
    """An 8-bit image in a domain that also holds a 16-bit one takes the domain's (deep) path
    everywhere: the same network input in training, evaluation, and translation of files and of
    shards, and the same translation, stored as the rest of its domain is."""
    rng = np.random.default_rng(3)
    eight = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for folder in ("trainA", "trainB", "testA", "testB"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        Image.fromarray(eight).save(tmp_path / "data" / folder / "a.png")
        (tmp_path / "data" / folder / "b.png").write_bytes(
            encode(rng.integers(0, 65536, (28, 20, 3), dtype=np.uint16), "png"))
    write_shards({(s, d): tmp_path / "data" / f"{s}{d}" for s in ("train", "test") for d in "AB"},
                 tmp_path / "shards", workers=1, keep_depth=True)
    with tarfile.open(tmp_path / "shards" / "train" / "A-000000.tar") as tar:
        stored = {"__key__": "a", "png": tar.extractfile("a.png").read()}
    cfg = DataConfig(root=str(tmp_path / "shards"))
    decoding = UnpairedStream(find_sources(cfg), cfg, 1, 1, 0).decodings["A"]
    trained = as_unit(as_tensor(decode(stored, decoding)))
    assert trained.dtype == torch.float32 and trained.shape == (3, 24, 32)

    split = load_test_split(tmp_path / "data", 16)
    evaluated = split.images_a[split.keys_a.index("a")]
    assert torch.equal(evaluated, to_unit_tensor(transforms.test_transform(decode(stored, decoding), 16))), "evaluation folders"

    net = Recording()
    translator = Translator(net, torch.device("cpu"), tile=0)
    translate_files(translator, tmp_path / "data" / "testA", tmp_path / "files")
    translate_shards(translator, str(tmp_path / "shards"), tmp_path / "translated", "A")
    inputs = [x for x in net.inputs if x.shape == trained.shape]
    assert len(inputs) == 3, "a.png of testA through files, of trainA and testA through shards"
    assert all(torch.equal(x, trained) for x in inputs), "translation of files and of shards"

    members = {}
    for tar_path in (tmp_path / "translated").rglob("A-*.tar"):
        with tarfile.open(tar_path) as tar:
            members |= {f"{tar_path.parent.name}/{m.name}": tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members) == ["test/a.npy", "test/b.npy", "train/a.npy", "train/b.npy"], \
        "one field for the domain: arrays of each input's type"
    from_shards = np.load(io.BytesIO(members["test/a.npy"]))
    from_files = np.asarray(Image.open(tmp_path / "files" / "a.png"))
    assert from_shards.dtype == from_files.dtype == np.uint8 and np.array_equal(from_shards, from_files)
