"""Scientific data: 16-bit and float samples, any band count, kept unquantised from the source
files through the shards, the loader and translation back out."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cyclegan.data.normalize import Normalize, from_unit
from cyclegan.config import DataConfig, load_config
from cyclegan.data.shards import write_shards
from cyclegan.data.sources import check_samples, find_sources
from cyclegan.data.stream import UnpairedStream, iter_test_images
from cyclegan.errors import ConfigError, DataError
from cyclegan.models.generator import GeneratorSpec
from cyclegan.translate import Translator
from cyclegan.translate.files import translate_files
from cyclegan.translate.shards import translate_shards
from tests.conftest import ROOT, script, tiny

SIZE = 64  # 64 x 64 = 4096 pixels: a 12-bit slice can hold every level once


class Identity(nn.Module):
    """A "generator" that returns its input: what comes out of a translation is then exactly what
    the data path did to the input and undid again."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.spec = GeneratorSpec(channels, channels, ngf=4, n_blocks=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def ct_slice(seed: int) -> np.ndarray:
    """A 12-bit CT-like slice: every one of the 4096 levels, shuffled."""
    return np.random.default_rng(seed).permutation(4096).reshape(SIZE, SIZE).astype(np.uint16)


def bands(seed: int, count: int = 4) -> np.ndarray:
    """A float32 multi-band image, as a satellite scene in reflectance units."""
    return np.random.default_rng(seed).uniform(-0.2, 1.3, (SIZE, SIZE, count)).astype(np.float32)


@pytest.fixture(scope="module")
def deep_data(tmp_path_factory):
    """Domain A: 16-bit greyscale PNGs (12-bit content); domain B: 4-band float32 .npy arrays."""
    root = tmp_path_factory.mktemp("deep")
    for split, count in (("train", 6), ("test", 2)):
        (root / "folders" / f"{split}A").mkdir(parents=True)
        (root / "folders" / f"{split}B").mkdir(parents=True)
        for i in range(count):
            seed = i + (100 if split == "test" else 0)
            Image.fromarray(ct_slice(seed)).save(root / "folders" / f"{split}A" / f"slice_{i}.png")
            np.save(root / "folders" / f"{split}B" / f"scene_{i}.npy", bands(seed))
    sources = {(s, d): root / "folders" / f"{s}{d}" for s in ("train", "test") for d in "AB"}
    write_shards(sources, root / "deep", shard_size=4, workers=1, keep_depth=True)
    write_shards(sources, root / "eight", shard_size=4, workers=1)
    return root


def test_the_manifest_records_types_bands_and_range(deep_data):
    splits = json.loads((deep_data / "deep" / "manifest.json").read_text())["splits"]
    a, b = splits["train"]["A"], splits["train"]["B"]
    assert (a["dtypes"], a["array_bands"], a["value_range"]) == ({"uint16": 6}, {}, [0, 4095])
    assert b["dtypes"] == {"float32": 6} and b["array_bands"] == {"4": 6}
    assert -0.2 <= b["value_range"][0] < 0 and 1 < b["value_range"][1] <= 1.3
    with tarfile.open(deep_data / "deep" / "train" / "A-000000.tar") as tar:
        stored = Image.open(io.BytesIO(tar.extractfile(tar.getmembers()[0]).read()))
        assert stored.mode == "I;16", "a 16-bit PNG, not 8-bit RGB"
    assert json.loads((deep_data / "eight" / "manifest.json").read_text())["splits"]["train"]["A"]["dtypes"] == \
        {"uint8": 6}, "without --keep-depth, images are quantised as before"


def test_a_12_bit_slice_keeps_its_4096_levels_through_shards_and_loader(deep_data):
    window = "range:0,4095"
    deep = find_sources(DataConfig(root=str(deep_data / "deep")))
    *_, tensor = next(iter_test_images(deep.test_a, SIZE, channels=1, normalize=window))
    assert tensor.shape == (1, SIZE, SIZE) and tensor.unique().numel() == 4096
    # the negative control: the same files in 8-bit shards keep at most 256 levels
    eight = find_sources(DataConfig(root=str(deep_data / "eight")))
    *_, quantised = next(iter_test_images(eight.test_a, SIZE, channels=1))
    assert quantised.unique().numel() <= 256


def test_the_training_loader_gives_every_16_bit_level_back_bit_for_bit(deep_data):
    cfg = DataConfig(root=str(deep_data / "deep"), preprocess="crop", crop_size=SIZE, load_size=SIZE, flip=False,
                     num_workers=0, normalize="range:0,4095")
    stream = UnpairedStream(find_sources(cfg), cfg, batch_size=1, batches_per_epoch=6, seed=0, channels=(1, 4))
    seen = set()
    for sample in stream:
        assert sample["A"].dtype == torch.float32 and sample["B"].shape == (4, SIZE, SIZE)
        index = int(sample["key_a"].rsplit("_", 1)[1])
        restored = from_unit(sample["A"].numpy().transpose(1, 2, 0), np.uint16, (0, 4095))
        assert np.array_equal(restored[:, :, 0], ct_slice(index)), sample["key_a"]
        seen.add(index)
    assert seen == set(range(6))


def test_translation_writes_what_came_in(deep_data, tmp_path):
    """Shards -> loader's normalisation -> identity generator -> inverse -> files of the input's
    type: uint16 bit for bit; float32 within float32 rounding of the window (the values pass
    through float32 in [-1, 1], where one unit in the last place is 6e-8 of the window)."""
    folders = deep_data / "folders"
    ct = Translator(Identity(1), torch.device("cpu"), tile=0, normalize=Normalize.parse("range:0,4095"))
    translate_files(ct, folders / "testA", tmp_path / "ct")
    for i in range(2):
        written = Image.open(tmp_path / "ct" / f"slice_{i}.png")
        assert written.mode == "I;16" and np.array_equal(np.asarray(written), ct_slice(100 + i))
    report, _ = translate_shards(ct, str(deep_data / "deep"), tmp_path / "ct-shards", "A")
    assert report.written == 8
    with tarfile.open(tmp_path / "ct-shards" / "test" / "A-000000.tar") as tar:
        arrays = [np.load(io.BytesIO(tar.extractfile(m).read())) for m in tar.getmembers() if m.name.endswith(".npy")]
    assert [a.dtype for a in arrays] == [np.uint16] * 2
    assert all(np.array_equal(a[:, :, 0], ct_slice(100 + i)) for i, a in enumerate(arrays))

    low, high = -0.5, 1.5
    scenes = Translator(Identity(4), torch.device("cpu"), tile=0, normalize=Normalize.parse(f"range:{low},{high}"))
    translate_files(scenes, folders / "testB", tmp_path / "scenes")
    for i in range(2):
        written = np.load(tmp_path / "scenes" / f"scene_{i}.npy")
        assert written.dtype == np.float32 and written.shape == (SIZE, SIZE, 4)
        assert np.abs(written - bands(100 + i)).max() <= 1e-6 * (high - low)
    # the percentile window is the input's own: restored on it, the values come back too
    own = Translator(Identity(4), torch.device("cpu"), tile=0, normalize=Normalize.parse("percentile:0,100"))
    assert np.abs(own(bands(7)) - bands(7)).max() <= 1e-6 * 1.5
    # the output domain's own window: domain B's data in 0..1000 here
    other = Translator(Identity(1), torch.device("cpu"), tile=0, normalize=Normalize.parse("range:0,4095"),
                       output_normalize=Normalize.parse("range:0,1000"))
    assert np.array_equal(other(ct_slice(0)), np.rint(ct_slice(0) / 4095 * 1000).astype(np.uint16))
    # --output-range dtype: [-1, 1] spread over the type's range instead of the window
    spread = Translator(Identity(1), torch.device("cpu"), tile=0, normalize=Normalize.parse("range:0,4095"),
                        full_range=True)
    assert spread(ct_slice(0)).max() == 65535


def test_bands_and_16_bit_train_and_their_grids_show_three_bands(deep_data, tmp_path):
    out = tmp_path / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(deep_data / "deep", out, "model.input_nc=1", "model.output_nc=4", "train.lambda_identity=0",
                 "data.normalize=range:0,4095", "data.normalize_b=percentile:0.5,99.5", "data.load_size=36",
                 "data.crop_size=32",
                 "train.max_steps=2", "tracking.mode=offline", "tracking.image_every=2", "tracking.num_images=2",
                 "tracking.display_bands=[3,1,0]"))
    grid = np.asarray(Image.open(out / "samples" / "step_0000002_BtoA.png"))
    assert grid.shape == (2 * 32, 3 * 32, 3)
    real_b = grid[:32, :32].astype(int)
    assert real_b.min() == 0 and real_b.max() == 255, "bands stretched to their range for display"
    assert np.abs(real_b[..., 0] - real_b[..., 1]).max() > 10, "three different bands, not grey"
    translated = tmp_path / "translated"
    script("translate.py", "--checkpoint", out, "--input", deep_data / "folders" / "testA", "--output", translated)
    written = np.load(translated / "slice_0.npy")
    assert written.shape == (SIZE, SIZE, 4) and written.dtype == np.uint16, \
        "4 bands of the input's type (no image format holds them), normalised as the run was"
    settings = json.loads((translated / ".translation.json").read_text())
    assert (settings["normalize"], settings["normalize_output"]) == ("range:0,4095", "percentile:0.5,99.5"), \
        "read as domain A was trained, written by domain B's normalisation"


def test_impossible_data_settings_are_named(deep_data):
    sources = find_sources(DataConfig(root=str(deep_data / "deep")))
    with pytest.raises(DataError, match="train domain B holds 6 float sample.* set data.normalize_b to range"):
        check_samples(sources, (1, 4), ("range:0,4095", "dtype"))
    with pytest.raises(DataError, match=r"arrays of other band counts than model.output_nc=3 \(6 with 4\)"):
        check_samples(sources, (1, 3), ("range:0,1", "range:0,1"))
    with pytest.raises(DataError, match="holds 6 image file\\(s\\), which have 1 or 3 channels, but model.input_nc=2"):
        check_samples(sources, (2, 4), ("range:0,1", "range:0,1"))
    assert check_samples(sources, (1, 4), ("range:0,4095", "range:-0.2,1.3")) == []
    for overrides, message in (
        (["data.normalize=range:5,1"], "'data.normalize' must be one of dtype, range:LO,HI or percentile:P1,P99"),
        (["data.normalize=window"], "'data.normalize' must be one of"),
        (["model.output_nc=4", "train.lambda_identity=0", "tracking.display_bands=[4,1,0]"],
         "'tracking.display_bands' must be band numbers from 0 to 3"),
        (["model.output_nc=0"], "'model.output_nc' must be at least 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "configs/default.yaml", overrides)


def test_deep_translation_keeps_fp32_and_8_bit_input_to_many_bands_gets_arrays(tmp_path):
    from cyclegan.models import ResnetGenerator
    from cyclegan.models.loading import export_generator

    torch.manual_seed(0)
    export_generator(ResnetGenerator(GeneratorSpec(1, 1, ngf=4, n_blocks=1)), tmp_path / "g.safetensors")
    auto = Translator.from_pretrained(tmp_path / "g.safetensors", precision="auto")
    fp32 = Translator.from_pretrained(tmp_path / "g.safetensors", precision="fp32")
    auto.bf16 = True  # as on a device with native bf16: 8-bit data would go in bf16, deeper data not
    assert np.array_equal(auto(ct_slice(3)), fp32(ct_slice(3))), "16-bit data is translated in fp32 under auto"
    eight = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    assert not np.array_equal(auto(eight), fp32(eight)), "the negative control: 8-bit data does take bf16"

    export_generator(ResnetGenerator(GeneratorSpec(1, 4, ngf=4, n_blocks=1)), tmp_path / "g4.safetensors")
    (tmp_path / "in").mkdir()
    Image.fromarray(eight[:, :, 0]).save(tmp_path / "in" / "grey.png")
    translate_files(Translator.from_pretrained(tmp_path / "g4.safetensors", precision="fp32"), tmp_path / "in",
                    tmp_path / "out")
    written = np.load(tmp_path / "out" / "grey.npy")
    assert written.shape == (SIZE, SIZE, 4) and written.dtype == np.uint8, "4 bands do not fit a PNG"


def test_16_bit_colour_pngs_keep_their_depth_and_bad_files_are_reported(tmp_path):
    for domain in "AB":
        (tmp_path / "in" / f"train{domain}").mkdir(parents=True)
        Image.fromarray(ct_slice(0)).save(tmp_path / "in" / f"train{domain}" / "good.png")
    nan = np.full((8, 8), np.nan, dtype=np.float32)
    Image.fromarray(nan).save(tmp_path / "in" / "trainA" / "nan.tif")
    colour16 = tmp_path / "in" / "trainB" / "colour16.png"
    pixels = np.random.default_rng(0).integers(0, 65536, (SIZE, SIZE, 3), dtype=np.uint16)
    colour16.write_bytes(_png16_rgb(pixels))
    sources = {("train", d): tmp_path / "in" / f"train{d}" for d in "AB"}
    manifest = write_shards(sources, tmp_path / "shards", workers=1, keep_depth=True)
    assert [s["reason"] for s in manifest["skipped"]] == [f"{tmp_path}/in/trainA/nan.tif: holds NaN or infinite values"]
    domain_b = manifest["splits"]["train"]["B"]
    assert domain_b["dtypes"] == {"uint16": 2} and domain_b["colour_samples"] == 1
    eight = write_shards(sources, tmp_path / "eight", workers=1)
    assert eight["converted"]["uint16 PNG with 3 band(s), read as 8 bits"] == 1, "without --keep-depth: reported"
    translate_files(Translator(Identity(3), torch.device("cpu"), tile=0), tmp_path / "in" / "trainB", tmp_path / "out")
    import png

    width, height, rows, info = png.Reader(filename=str(tmp_path / "out" / "colour16.png")).asDirect()
    assert info["bitdepth"] == 16 and np.array_equal(np.vstack(list(rows)).reshape(height, width, 3), pixels), \
        "a 16-bit colour PNG in, the same out"
    sources = find_sources(DataConfig(root=str(tmp_path / "shards")))
    assert check_samples(sources, (1, 3), ("range:-1000,1000", "dtype")) == [], "values fill half the window"
    narrow = check_samples(sources, (1, 3), ("range:0,1000000", "dtype"))
    assert len(narrow) == 1 and "fill 0% of data.normalize=range:0,1000000" in narrow[0]


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_tiffs_of_any_depth_and_bands_keep_it_through_shards_loader_and_translation(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    colour16 = rng.integers(0, 65536, (SIZE, SIZE, 3), dtype=np.uint16)
    planar = rng.uniform(0, 1, (5, SIZE, SIZE)).astype(np.float32)  # 5 bands stored band after band
    for domain, image, options in (("A", colour16, {"photometric": "rgb"}),
                                   ("B", planar, {"photometric": "minisblack", "planarconfig": "separate"})):
        (tmp_path / "in" / f"train{domain}").mkdir(parents=True)
        tifffile.imwrite(tmp_path / "in" / f"train{domain}" / "x.tif", image, **options)
    sources = {("train", d): tmp_path / "in" / f"train{d}" for d in "AB"}
    splits = write_shards(sources, tmp_path / "shards", workers=1, keep_depth=True)["splits"]["train"]
    assert (splits["A"]["dtypes"], splits["A"]["array_bands"]) == ({"uint16": 1}, {})
    assert (splits["B"]["dtypes"], splits["B"]["array_bands"]) == ({"float32": 1}, {"5": 1})
    colour_only = {("train", d): tmp_path / "in" / "trainA" for d in "AB"}
    quantised = write_shards(colour_only, tmp_path / "eight", workers=1)["splits"]["train"]["A"]["dtypes"]
    assert quantised == {"uint8": 1}, "the negative control: without --keep-depth, 8 bits (as Pillow reads it)"

    cfg = DataConfig(root=str(tmp_path / "shards"), preprocess="crop", crop_size=SIZE, load_size=SIZE, flip=False,
                     num_workers=0, normalize="dtype", normalize_b="range:0,1")
    sample = next(iter(UnpairedStream(find_sources(cfg), cfg, 1, 1, seed=0, channels=(3, 5))))
    assert np.array_equal(from_unit(sample["A"].numpy().transpose(1, 2, 0), np.uint16, (0, 65535)), colour16)
    assert np.abs(sample["B"].numpy() - (planar * 2 - 1)).max() < 1e-6, "planar bands come out as bands"

    ct = Translator(Identity(3), torch.device("cpu"), tile=0)
    translate_files(ct, tmp_path / "in" / "trainA", tmp_path / "out")
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "x.tif"), colour16), "a 16-bit colour TIFF, bit for bit"


def test_outputs_take_a_type_that_holds_the_output_domains_window(tmp_path):
    mr = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 15)
    to_ct = Translator(Identity(1), torch.device("cpu"), tile=0, normalize=Normalize.parse("dtype"),
                       output_normalize=Normalize.parse("range:-1000,1000"))
    hounsfield = to_ct(mr)
    assert hounsfield.dtype == np.float32 and hounsfield.min() == -1000 and hounsfield.max() > 0, \
        "uint16 cannot hold -1000 HU: float32, not values clipped at 0"
    from cyclegan.translate.core import _normalizations

    export = tmp_path / "g.safetensors"
    export.touch()
    assert [str(n) for n in _normalizations(export, "AtoB", "range:-1000,1000", None)] == \
        ["range:-1000,1000", "range:-1000,1000"], "no run folder: the output is normalised as the input"


def test_tiffs_pillow_reads_stay_on_its_path_and_the_rest_is_told_apart(tmp_path):
    import tifffile

    from cyclegan.data.shards import prepare_image

    rng = np.random.default_rng(0)
    rgba8 = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba8, "RGBA").save(tmp_path / "rgba8.tif", compression="tiff_lzw")
    tifffile.imwrite(tmp_path / "rgba16.tif", rng.integers(0, 65536, (8, 9, 4), dtype=np.uint16), photometric="rgb",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "bands.tif", rng.integers(0, 65536, (8, 9, 4), dtype=np.uint16),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "stack.tif", rng.integers(0, 256, (5, 8, 9), dtype=np.uint8), photometric="minisblack")

    def prepared(name, keep):
        return prepare_image((tmp_path / name, tmp_path, None, keep))

    official = prepared("rgba8.tif", False)
    assert official.data == prepared("rgba8.tif", True).data and official.ext == "png", \
        "an 8-bit RGBA TIFF (LZW) takes Pillow's path, alpha dropped, with or without --keep-depth"
    kept = prepared("rgba16.tif", True)
    assert (kept.ext, kept.content["dtype"], kept.content["bands"], kept.content["array"]) == \
        ("tif", "uint16", 3, False)
    assert prepared("rgba16.tif", False).converted_from == "uint16 TIFF with 3 band(s), read as 8 bits"
    assert prepared("bands.tif", True).content["array"]
    assert "only --keep-depth keeps" in prepared("bands.tif", False).error
    assert "a TIFF of 5 pages" in prepared("stack.tif", True).error and "5 pages" in prepared("stack.tif", False).error


def test_cmyk_and_single_band_tiffs_go_where_they_are_read_faithfully(tmp_path):
    import tifffile

    from cyclegan.io.formats import read_array
    from cyclegan.data.shards import prepare_image

    Image.new("CMYK", (9, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    cmyk = prepare_image((tmp_path / "cmyk.tif", tmp_path, None, True))
    assert (cmyk.ext, cmyk.content["dtype"], cmyk.colour) == ("png", "uint8", True), "CMYK: Pillow, to RGB"
    hounsfield = np.random.default_rng(0).integers(-1024, 3000, (8, 9), dtype=np.int16)
    tifffile.imwrite(tmp_path / "ct.tif", hounsfield)
    assert read_array(tmp_path / "ct.tif", "ct.tif", False).dtype == np.int16, "int16 stays int16 (tifffile)"


def test_files_that_cannot_be_samples_are_skipped_by_translation_not_fatal(tmp_path):
    with open(tmp_path / "archive.npy", "wb") as file:  # an .npz under an .npy name
        np.savez(file, a=np.zeros(3))
    tifffile_cmyk_alpha = tmp_path / "cmyk_alpha.tif"
    import tifffile

    tifffile.imwrite(tifffile_cmyk_alpha, np.zeros((8, 9, 5), np.uint8), photometric="separated",
                     extrasamples=["unassalpha"])
    Image.fromarray(ct_slice(0)).save(tmp_path / "good.png")
    report = translate_files(Translator(Identity(1), torch.device("cpu"), tile=0), tmp_path, tmp_path / "out")
    assert report.written == 1 and len(report.skipped) == 2
    assert any("archive.npy" in reason for reason in report.skipped)
