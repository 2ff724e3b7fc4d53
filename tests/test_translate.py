"""scripts/translate.py on real files, shards and videos: sizes, modes, bad input, ranks, resume,
exact tiles, and the official test arithmetic."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cyclegan.io.formats import read_array
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator
from cyclegan.translate.tiles import translate_tiled
from cyclegan.translate.video import flicker
from tests.conftest import ROOT, launch, make_image_zoo, script

TRANSLATE = str(ROOT / "scripts/translate.py")


def save_generator(path, spec=GeneratorSpec(ngf=8, n_blocks=2), seed=0):
    torch.manual_seed(seed)
    net = ResnetGenerator(spec)
    if path.suffix == ".safetensors":
        export_generator(net, path)
    else:
        torch.save(net.state_dict(), path)
    return net


def test_folder_keeps_sizes_names_and_reports_bad_files(tmp_path):
    save_generator(tmp_path / "g.pth")
    make_image_zoo(tmp_path / "in")
    Image.new("RGB", (50, 37), (10, 200, 30)).save(tmp_path / "in" / "odd.png")
    Image.new("RGB", (3, 3)).save(tmp_path / "in" / "tiny.png")
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in",
                    "--output", tmp_path / "out", "--device", "cpu", "--precision", "fp32")
    assert "tiny.png: 3 x 3 px is too small to translate" in result.stdout
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*")
                     if not p.name.startswith("."))
    assert "nested/inner.v2.png" in written and "odd.png" in written and "deep16.png" in written
    # deep16.png makes the folder a deep domain (one path for all its files): a TIFF for a TIFF
    assert len(written) == 12 and "rgb.png" in written and "rgb.jpg.png" in written and "rgb.tiff.tif" in written
    deep = read_array(tmp_path / "out" / "deep16.png", "deep16.png", is_npy=False)
    assert deep.shape == (40, 48, 3) and deep.dtype == np.uint16, "16-bit in, 16-bit (colour) out"
    with Image.open(tmp_path / "out" / "odd.png") as out:
        assert out.size == (50, 37) and out.mode == "RGB"
    assert "skipped 4 item(s) (unreadable, too small, or colour for a greyscale generator)" in result.stdout
    for name in ("empty.png", "truncated.jpg", "not_an_image.png"):
        assert name in result.stdout
    assert "converted to the generator's channels from:" in result.stdout and "CMYK (1)" in result.stdout
    again = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in",
                   "--output", tmp_path / "out", "--device", "cpu", "--precision", "fp32")
    assert "translated 0 image(s)" in again.stdout and "kept 12 image(s) completed by an earlier run" in again.stdout


def test_matches_official_test_pipeline_within_one_level(tmp_path):
    net = save_generator(tmp_path / "latest_net_G_A.pth", GeneratorSpec(ngf=16, n_blocks=3)).eval()
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    script("translate.py", "--checkpoint", tmp_path / "latest_net_G_A.pth", "--input", tmp_path / "x.png",
           "--output", tmp_path / "out", "--load-size", "256", "--device", "cpu", "--precision", "fp32")
    official = transforms.Compose([
        transforms.Resize([256, 256], transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    with torch.no_grad():
        y = net(official(image).unsqueeze(0))[0]
    expected = ((np.transpose(y.numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)
    ours = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_empty_and_missing_input_are_errors(tmp_path):
    save_generator(tmp_path / "g.pth")
    (tmp_path / "empty").mkdir()
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "empty",
                    "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "no images found" in result.stderr and "Traceback" not in result.stderr
    result = script("translate.py", "--checkpoint", tmp_path / "missing.pth", "--input", tmp_path / "empty",
                    "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "missing.pth does not exist" in result.stderr
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "clip.mp4",
                    "--output", tmp_path / "out.mp4", check=False)
    assert result.returncode == 2 and "cannot be translated as a video" in result.stderr and "Traceback" not in result.stderr


# --- exact tiles ------------------------------------------------------------------------------

def untiled(net, pixels):
    x = torch.tensor(pixels).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    pad_h, pad_w = -x.shape[2] % 4, -x.shape[3] % 4
    with torch.no_grad():
        y = net(torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))[..., :x.shape[2], :x.shape[3]]
    return ((y[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).clip(0, 255).astype(np.uint8)


def psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("antialias", [False, True], ids=["strided", "antialiased"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_tiles_use_whole_image_statistics_and_match_the_untiled_translation(norm, antialias):
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2, norm=norm, antialias=antialias)).eval()
    if norm == "batch":  # statistics as a trained network has them
        for layer in net.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.normal_(0, 0.1), layer.running_var.uniform_(0.5, 2)
    pixels = np.random.default_rng(0).integers(0, 256, (101, 86, 3), dtype=np.uint8)  # sizes not multiples of 4
    whole = untiled(net, pixels)
    for tile in (16, 40, 200):  # many tiles, a few, one
        assert psnr(translate_tiled(net, pixels, tile, torch.device("cpu")), whole) > 60, (norm, tile)


@pytest.mark.parametrize("antialias", [False, True], ids=["strided", "antialiased"])
def test_the_scratch_space_checked_first_is_what_the_planes_take_at_their_peak(antialias, monkeypatch):
    from cyclegan.translate import tiles

    live, peak = {}, [0]

    class Counted(tiles.DiskPlane):
        def __init__(self, *args):
            super().__init__(*args)
            live[id(self)] = self.height * self.width * self.channels * 4
            peak[0] = max(peak[0], sum(live.values()))

        def close(self):
            live.pop(id(self), None)
            super().close()

    monkeypatch.setattr(tiles, "DiskPlane", Counted)
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1, antialias=antialias)).eval()
    translate_tiled(net, np.zeros((64, 48, 3), np.uint8), 32, torch.device("cpu"))
    assert peak[0] == tiles.scratch_bytes(net, 64, 48) and not live


def test_naive_tiles_are_what_the_exact_ones_avoid():
    # negative control: tiles translated on their own get instance-norm statistics of their own
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2)).eval()
    coarse = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((96, 96), Image.BICUBIC))  # tones vary across the image
    naive = np.concatenate([np.concatenate([untiled(net, pixels[r:r + 32, c:c + 32]) for c in range(0, 96, 32)], 1)
                            for r in range(0, 96, 32)], 0)
    assert psnr(naive, untiled(net, pixels)) < 40 < psnr(translate_tiled(net, pixels, 32, torch.device("cpu")),
                                                         untiled(net, pixels))


def test_cli_tiles_exactly(tmp_path):
    save_generator(tmp_path / "g.pth")
    pixels = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    for tile in ("0", "24"):
        script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "x.png",
               "--output", tmp_path / tile, "--tile", tile, "--precision", "fp32")
    whole, tiled = (np.asarray(Image.open(tmp_path / t / "x.png")) for t in ("0", "24"))
    assert psnr(tiled, whole) > 60


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_tiles_leave_no_scratch_behind_even_on_errors(monkeypatch):
    net = ResnetGenerator(GeneratorSpec(ngf=4, n_blocks=1)).eval()
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    before = open_fds()
    translate_tiled(net, pixels, 16, torch.device("cpu"))
    assert open_fds() == before
    calls = {"n": 0}
    original = torch.nn.functional.conv2d

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", failing)
    with pytest.raises(KeyboardInterrupt):
        translate_tiled(net, pixels, 16, torch.device("cpu"))
    assert open_fds() == before  # and the scratch files were unlinked when made


def test_images_too_big_for_memory_are_tiled_automatically(monkeypatch):
    from cyclegan.translate.core import Translator

    translator = Translator(ResnetGenerator(GeneratorSpec(ngf=4, n_blocks=1)), torch.device("cpu"))
    monkeypatch.setattr(translator, "free_bytes", lambda: 2 * translator.untiled_bytes(64, 64))
    assert translator.tile_for(64, 64) == 0 and translator.tile_for(128, 64) == 512
    translator.tile = 0
    assert translator.tile_for(4096, 4096) == 0, "--tile 0 never tiles"


# --- shards across ranks ----------------------------------------------------------------------

@pytest.fixture
def shard_input(tmp_path):
    """5 shards of domain A (8 images each, two sizes) with one corrupt sample, and a generator."""
    rng = np.random.default_rng(0)
    for domain in "AB":
        folder = tmp_path / "folders" / f"train{domain}"
        folder.mkdir(parents=True)
        for i in range(40):
            size = (48, 40) if i % 3 else (32, 32)
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    script("make_shards.py", "--input", tmp_path / "folders", "--output", tmp_path / "shards", "--shard-size", "8",
           "--workers", "1")
    shard = tmp_path / "shards" / "train" / "A-000002.tar"
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("broken.png")
        info.size = 5
        tar.addfile(info, fileobj=io.BytesIO(b"nopng"))
    save_generator(tmp_path / "g_ab.safetensors")
    return tmp_path


def shard_contents(folder):
    """(member name, bytes) of every output shard, in shard and tar order."""
    contents = []
    for shard in sorted(folder.glob("train/A-*.tar")):
        with tarfile.open(shard) as tar:
            contents += [(member.name, tar.extractfile(member).read()) for member in tar]
    return contents


@pytest.mark.slow
def test_shards_split_across_two_ranks_equal_one_process(shard_input):
    args = ["--checkpoint", shard_input / "g_ab.safetensors", "--input", shard_input / "shards", "--precision", "fp32"]
    launch(1, TRANSLATE, *args, "--output", shard_input / "one")
    result = launch(2, TRANSLATE, *args, "--output", shard_input / "two")
    assert result.stdout.count("translated 40 sample(s)") == 1 and "skipped 1 item(s) (unreadable" in result.stdout
    one, two = shard_contents(shard_input / "one"), shard_contents(shard_input / "two")
    assert [name for name, _ in one] == [f"{i:03d}.png" for i in range(40)], "every key once, in the input's order"
    assert one == two, "the same bytes from one process and from two"
    manifest = json.loads((shard_input / "two" / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["B"]  # the outputs are of domain B
    assert entry["shards"] == [f"train/A-{i:06d}.tar" for i in range(5)] and entry["shard_samples"] == [8] * 5
    assert len(manifest["skipped"]) == 1 and "broken" in manifest["skipped"][0]
    assert not list((shard_input / "two").rglob(".*.partial"))


def test_shard_files_patterns_and_damaged_shards(shard_input):
    """A single shard path, pipe: URLs named by their .tar, and a truncated shard: reported, the
    others done, exit status 2; a rerun with other settings into the same output is refused."""
    shards, checkpoint = shard_input / "shards" / "train", shard_input / "g_ab.safetensors"
    script("translate.py", "--checkpoint", checkpoint, "--input", shards / "A-000000.tar", "--output",
           shard_input / "single", "--precision", "fp32")
    with tarfile.open(shard_input / "single" / "A-000000.tar") as tar:
        assert tar.getnames() == [f"{i:03d}.png" for i in range(8)]
    data = (shards / "A-000001.tar").read_bytes()
    (shard_input / "cut.tar").write_bytes(data[: len(data) // 2])
    spec = f"pipe:cat {shards / 'A-000000.tar'},pipe:cat {shard_input / 'cut.tar'}"
    result = script("translate.py", "--checkpoint", checkpoint, "--input", spec, "--output", shard_input / "piped",
                    "--precision", "fp32", check=False)
    assert result.returncode == 2 and "could not read 1 input(s)" in result.stdout and "cut.tar" in result.stdout
    assert "Traceback" not in result.stderr
    manifest = json.loads((shard_input / "piped" / "manifest.json").read_text())
    assert manifest["splits"]["translated"]["B"]["shards"] == ["A-000000.tar"]
    assert not (shard_input / "piped" / "cut.tar").exists() and not list((shard_input / "piped").glob(".*partial"))
    result = script("translate.py", "--checkpoint", checkpoint, "--input", spec, "--output", shard_input / "piped",
                    "--precision", "bf16", check=False)
    assert result.returncode == 2 and "holds a translation made otherwise (precision: fp32 there, bf16 here" \
        in result.stderr


@pytest.mark.slow
def test_folders_split_across_two_ranks_equal_one_process(shard_input):
    args = ["--checkpoint", shard_input / "g_ab.safetensors", "--input", shard_input / "folders", "--precision", "fp32"]
    launch(1, TRANSLATE, *args, "--output", shard_input / "one")
    result = launch(2, TRANSLATE, *args, "--output", shard_input / "two")
    assert "translated 80 image(s)" in result.stdout
    one, two = ({p.relative_to(shard_input / n): p.read_bytes() for p in (shard_input / n).rglob("*.png")}
                for n in ("one", "two"))
    assert len(one) == 80 and one == two


@pytest.mark.slow
def test_a_killed_shard_job_rerun_redoes_only_the_missing_shards(shard_input):
    out = shard_input / "out"
    args = [sys.executable, TRANSLATE, "--checkpoint", str(shard_input / "g_ab.safetensors"),
            "--input", str(shard_input / "shards"), "--output", str(out), "--batch-size", "1", "--precision", "fp32"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("train/A-*.tar")):
        assert time.time() < deadline and process.poll() is None, "no shard was completed"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("train/A-*.tar")}
    assert 1 <= len(done) < 5
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"kept {8 * len(done)} sample(s) completed by an earlier run" in result.stdout
    assert f"translated {40 - 8 * len(done)} sample(s)" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train/A-*.tar") if p.name in done} == done
    assert len(shard_contents(out)) == 40 and not list(out.rglob(".*.partial"))


# --- video ------------------------------------------------------------------------------------

def make_clip(path, frames=20, fps=12, size=(64, 48), moving=True, audio=True, noise=0):
    """A textured background with a red square crossing it (or still), optionally with grain and a tone."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv444p"
        tone = container.add_stream("aac", rate=16000) if audio else None
        for t in range(frames):
            image = background.copy()
            if moving:
                image[10:20, 5 + 2 * t:15 + 2 * t] = (255, 0, 0)
            if noise:
                image = np.clip(image + rng.integers(-noise, noise + 1, image.shape), 0, 255).astype(np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if tone:
            samples = (0.3 * np.sin(np.arange(16000 * frames // fps) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            for start in range(0, len(samples) - 1024, 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt", layout="mono")
                frame.sample_rate = 16000
                container.mux(tone.encode(frame))
            container.mux(tone.encode())


def read_clip(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate, [s.codec_context.name for s in container.streams.audio]


@pytest.mark.parametrize("suffix, size, audio_codec", [(".mp4", (64, 48), "aac"), (".mov", (63, 47), "aac"),
                                                      (".webm", (64, 48), "opus")])
def test_video_keeps_frames_rate_size_and_audio(tmp_path, suffix, size, audio_codec):
    save_generator(tmp_path / "g.pth")
    make_clip(tmp_path / "in.mkv", size=size)
    script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in.mkv",
           "--output", tmp_path / f"out{suffix}", "--batch-size", "3", "--precision", "fp32")
    frames, rate, audio = read_clip(tmp_path / f"out{suffix}")
    source_frames, source_rate, _ = read_clip(tmp_path / "in.mkv")
    assert len(frames) == len(source_frames) == 20 and rate == source_rate == 12
    assert frames[0].shape == (size[1], size[0], 3)
    assert audio == [audio_codec], "the tone copied (WebM takes no AAC: re-encoded as Opus)"
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in.mkv",
                    "--output", tmp_path, check=False)
    assert result.returncode == 2 and "in.mkv is an input of this command: choose another --output" in result.stderr


def test_video_keeps_variable_frame_times_and_fits_audio_to_the_container(tmp_path):
    save_generator(tmp_path / "g.pth")
    with av.open(str(tmp_path / "vfr.mkv"), "w") as container:  # 30 fps for 10 frames, then 10 fps; Opus sound
        video = container.add_stream("libx264", rate=30)
        video.width, video.height = 64, 48
        video.codec_context.time_base = Fraction(1, 90000)
        tone = container.add_stream("libopus", rate=48000)
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = 3000 * min(i, 10) + 9000 * max(i - 10, 0), Fraction(1, 90000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, 48000, 960):
            samples = np.zeros((1, 960), dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, start
            container.mux(tone.encode(frame))
        container.mux(tone.encode())
    script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "vfr.mkv",
           "--output", tmp_path / "vfr.mov", "--precision", "fp32")
    times = {}
    for name in ("vfr.mkv", "vfr.mov"):
        with av.open(str(tmp_path / name)) as container:
            times[name] = [frame.time for frame in container.decode(video=0)]
            codecs = [s.codec_context.name for s in container.streams.audio]
    assert len(times["vfr.mov"]) == 20
    assert max(abs(a - b) for a, b in zip(times["vfr.mkv"], times["vfr.mov"])) < 0.002
    assert codecs == ["aac"], "MOV takes no Opus: re-encoded"


def test_complete_matroska_and_webm_clips_with_sound_are_not_called_cut_off(tmp_path):
    """Matroska and WebM state no frame count; their container duration spans the sound too,
    which ends after the last frame here: a complete clip must not be called short."""
    save_generator(tmp_path / "g.pth")
    make_clip(tmp_path / "in.mkv")
    for source, target in (("in.mkv", "out.webm"), ("out.webm", "back.mkv")):
        result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / source,
                        "--output", tmp_path / target, "--precision", "fp32")
        assert "cut off" not in result.stdout + result.stderr, result.stdout
        frames, _, audio = read_clip(tmp_path / target)
        assert len(frames) == 20 and len(audio) == 1


def test_a_still_clip_gives_identical_frames_and_smoothing_lowers_flicker(tmp_path):
    save_generator(tmp_path / "g.pth")
    make_clip(tmp_path / "still.mkv", moving=False, audio=False)
    script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "still.mkv",
           "--output", tmp_path / "still-out.mkv", "--batch-size", "3", "--precision", "fp32")
    frames, _, _ = read_clip(tmp_path / "still-out.mkv")
    assert len(frames) == 20 and all(np.array_equal(frames[0], frame) for frame in frames)
    make_clip(tmp_path / "grainy.mkv", audio=False, noise=3)  # sensor grain: the translation flickers
    source, _, _ = read_clip(tmp_path / "grainy.mkv")
    measured = {}
    for strength in ("0", "0.8"):
        script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "grainy.mkv",
               "--output", tmp_path / f"grainy-{strength}.mkv", "--smoothing", strength, "--precision", "fp32")
        measured[strength] = flicker(source, read_clip(tmp_path / f"grainy-{strength}.mkv")[0])
    assert measured["0.8"] < 0.5 * measured["0"], measured
