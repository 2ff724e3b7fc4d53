"""Greyscale domains: 1-channel images in, 1-channel networks, 1-channel translations out."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cyclegan.checkpoint import complete_checkpoints
from cyclegan.config import load_config
from cyclegan.errors import ConfigError, UserError
from cyclegan.images import ChannelMismatch, to_channels
from cyclegan.io.samples import Decoding, read_sample
from cyclegan.models import NLayerDiscriminator, ResnetGenerator, load_generator
from cyclegan.models.generator import GeneratorSpec
from cyclegan.models.loading import export_generator
from cyclegan.translate import Translator
from tests.conftest import ROOT, script, tiny


def test_images_become_the_domains_channels():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    for image in (Image.fromarray(grey), Image.fromarray(np.stack([grey] * 3, axis=-1))):  # L, and grey saved as RGB
        assert np.array_equal(read_sample(image, Decoding(1)).array(), grey[:, :, None])
        assert np.array_equal(read_sample(image, Decoding(3)).array(), np.stack([grey] * 3, axis=-1))
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    assert np.array_equal(np.asarray(to_channels(deep, 1)), grey), "16-bit greyscale scaled to 8 bits, as for RGB"
    nearly_grey = np.stack([grey, np.clip(grey.astype(int) + 2, 0, 255).astype(np.uint8), grey], axis=-1)
    assert read_sample(Image.fromarray(nearly_grey), Decoding(1)).array().shape == (12, 10, 1), \
        "JPEG's chroma rounding is still grey"
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    with pytest.raises(ChannelMismatch, match="x.png: a colour image in a 1-channel"):
        to_channels(Image.fromarray(colour), 1, "x.png")


@pytest.mark.parametrize("overrides, message", [
    (["model.input_nc=1", "train.lambda_identity=0.5"],
     "'train.lambda_identity' must be 0 when model.input_nc (1) and model.output_nc (3) differ"),
    (["model.output_nc=0"], "'model.output_nc' must be at least 1"),
])
def test_impossible_channel_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs/default.yaml", overrides)
    assert message in str(info.value)
    load_config(ROOT / "configs/default.yaml", ["model.input_nc=1", "model.output_nc=1", "train.lambda_identity=0.5"])


@pytest.fixture(scope="module")
def grey_to_colour(demo_folders, tmp_path_factory):
    """The demo scenes with domain A in greyscale (L PNGs): a colourisation task."""
    root = tmp_path_factory.mktemp("grey")
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / "folders" / folder).mkdir(parents=True)
        for path in sorted((demo_folders / folder).glob("*.png"))[:24]:
            image = Image.open(path)
            (image.convert("L") if folder.endswith("A") else image).save(root / "folders" / folder / path.name)
    script("make_shards.py", "--input", root / "folders", "--output", root / "shards", "--workers", "1")
    return root


def test_greyscale_to_colour_trains_exports_and_translates(grey_to_colour, tmp_path):
    out = tmp_path / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(grey_to_colour / "shards", out, "model.input_nc=1", "train.max_steps=2", "tracking.mode=offline",
                 "tracking.image_every=2", "tracking.num_images=2"))
    last = complete_checkpoints(out / "checkpoints")[-1]
    weights = {name: load_file(str(last / f"{name}.safetensors")) for name in ("g_ab", "g_ba", "d_a", "d_b")}
    assert {n: w["model.1.weight" if n[0] == "g" else "model.0.weight"].shape[1] for n, w in weights.items()} == \
        {"g_ab": 1, "g_ba": 3, "d_a": 1, "d_b": 3}, "G_AB takes A's one channel; D_A judges A"
    assert (load_generator(last / "g_ab.safetensors").spec.out_channels,
            load_generator(last / "g_ba.safetensors").spec.out_channels) == (3, 1)
    grid = np.asarray(Image.open(out / "samples" / "step_0000002_AtoB.png"))
    assert grid.shape == (2 * 32, 3 * 32, 3), "real | translated | reconstructed: no identity across channel counts"
    first = grid[:32, :32]
    assert np.array_equal(first[..., 0], first[..., 1]) and np.array_equal(first[..., 1], first[..., 2]), \
        "the greyscale real image shows as grey"

    assert load_generator(out / "export", direction="AtoB").spec.in_channels == 1
    source = Image.open(next((grey_to_colour / "folders" / "testA").glob("*.png")))
    colourised = Translator.from_pretrained(out, direction="AtoB")(source)
    assert colourised.mode == "RGB" and colourised.size == source.size
    back = Translator.from_pretrained(out, direction="BtoA")(colourised)
    assert back.mode == "L" and back.size == source.size

    translated = tmp_path / "grey"
    script("translate.py", "--checkpoint", out, "--direction", "BtoA", "--input",
           grey_to_colour / "folders" / "testB", "--output", translated)
    written = sorted(translated.glob("*.png"))
    assert written and all(Image.open(p).mode == "L" for p in written), "a 1-channel generator writes greyscale"
    scores = script("evaluate.py", "--checkpoint", out, "--data", grey_to_colour / "shards", "--paired-only",
                    "--size", "32")
    assert {"AtoB/l1", "BtoA/psnr"} <= set(json.loads(scores.stdout.strip().splitlines()[-1]))
    script("export.py", "--checkpoint", out, "--format", "onnx", "--output", tmp_path / "g.onnx")
    script("export.py", "--checkpoint", out, "--format", "hf", "--output", tmp_path / "hf")
    for exported in (tmp_path / "g.onnx", tmp_path / "hf"):
        assert Translator.from_pretrained(exported)(source).mode == "RGB", exported


def test_a_colour_image_in_a_greyscale_domain_stops_training_with_a_message(demo_shards, tmp_path):
    before_any_work = script("train.py", "--config", "configs/demo.yaml",
                             *tiny(demo_shards, tmp_path / "run", "model.input_nc=1", "train.max_steps=1",
                                   "tracking.mode=disabled"), check=False)
    assert before_any_work.returncode == 2 and "train domain A holds 160 colour image(s) (e.g. scene_0000.png), " \
        "but model.input_nc=1 makes it greyscale" in before_any_work.stderr
    # shards given without their manifest: the loader (here in a worker process) finds the first one
    in_the_loader = script("train.py", "--config", "configs/demo.yaml",
                           *tiny(demo_shards, tmp_path / "run", "model.input_nc=1", "train.max_steps=1",
                                 "tracking.mode=disabled", "tracking.num_images=0", "data.num_workers=1",
                                 f"data.train_a={demo_shards}/train/A-{{000000..000003}}.tar",
                                 f"data.test_a={demo_shards}/test/A-000000.tar"), check=False)
    assert in_the_loader.returncode == 2 and "a colour image in a 1-channel (greyscale) domain" in in_the_loader.stderr
    assert "Traceback" not in before_any_work.stderr + in_the_loader.stderr


def test_official_checkpoints_of_other_channels_load_and_warm_start(demo_shards, grey_to_colour, tmp_path):
    torch.manual_seed(0)
    official = tmp_path / "official"
    official.mkdir()
    spec = GeneratorSpec(1, 3, ngf=8, n_blocks=1)
    nets = {"latest_net_G_A.pth": ResnetGenerator(spec), "latest_net_G_B.pth": ResnetGenerator(GeneratorSpec(3, 1, 8, 1)),
            "latest_net_D_A.pth": NLayerDiscriminator(3, 8, 1), "latest_net_D_B.pth": NLayerDiscriminator(1, 8, 1)}
    for file, net in nets.items():  # the official D_A judges domain B (3 channels here), D_B domain A
        torch.save(net.state_dict(), official / file)
    assert load_generator(official / "latest_net_G_A.pth").spec == spec, "channels read off the weights"
    started = script("train.py", "--config", "configs/demo.yaml",
                     *tiny(grey_to_colour / "shards", tmp_path / "run", "model.input_nc=1", "train.max_steps=1",
                           "train.lr=1e-12", "tracking.mode=disabled", f"init_from={official}"))
    assert "initialised g_ab, g_ba, d_a, d_b from" in started.stdout
    refused = script("train.py", "--config", "configs/demo.yaml",
                     *tiny(demo_shards, tmp_path / "rgb", "train.max_steps=1", "tracking.mode=disabled",
                           f"init_from={official}"), check=False)
    assert refused.returncode == 2 and "translates 1 -> 3 channels, this config 3 -> 3: set model.input_nc=1 " \
        "model.output_nc=3" in refused.stderr


def test_a_greyscale_generator_takes_tensors_of_its_channels(tmp_path):
    export_generator(ResnetGenerator(GeneratorSpec(1, 1, ngf=4, n_blocks=1)), tmp_path / "g_ab.safetensors")
    translator = Translator.from_pretrained(tmp_path / "g_ab.safetensors")
    assert translator(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(UserError, match="this generator takes 1-channel images, not 3"):
        translator(torch.zeros(1, 3, 16, 16))
    assert translator(Image.new("RGB", (20, 16), (90, 90, 90))).mode == "L", "grey saved as RGB is taken as grey"


def test_a_greyscale_generator_translates_a_colour_video_by_its_luma(tmp_path):
    from tests.test_translate import make_clip, read_clip, save_generator

    save_generator(tmp_path / "g.pth", GeneratorSpec(1, 1, ngf=8, n_blocks=1))
    make_clip(tmp_path / "in.mkv", frames=6, audio=False)
    script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in.mkv",
           "--output", tmp_path / "out.mp4", "--precision", "fp32")
    frames, _, _ = read_clip(tmp_path / "out.mp4")
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    spread = max(np.abs(f.astype(int) - f.mean(axis=2, keepdims=True)).max() for f in frames)
    assert spread <= 3, "grey frames (up to the encoder's chroma rounding)"
