"""The programs' edges, found by a new user and an adversarial run: evaluation on test sets with an
unreadable image (across ranks), odd sizes and names that do not pair; translation's default
precision, output names, Ctrl-C, truncated videos and linked folders; make_shards' messages."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from cyclegan.evaluation import EvalSplit, Evaluator, load_test_split
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator
from tests.conftest import ROOT, launch, script


def paired_test_folders(demo_folders: Path, root: Path, count: int) -> list[str]:
    """testA/ and testB/ with the first `count` demo test scenes (their names pair); the names."""
    names = [p.name for p in sorted((demo_folders / "testA").glob("*.png"))[:count]]
    for domain in "AB":
        (root / f"test{domain}").mkdir(parents=True)
        for name in names:
            shutil.copy(demo_folders / f"test{domain}" / name, root / f"test{domain}" / name)
    return names


# ---- evaluation


@pytest.mark.heavy  # about 25 s; test_evaluation_pairs checks 1 against 2 ranks within make test
def test_an_unreadable_test_image_is_left_out_whatever_the_ranks(generators, demo_folders, inception_weights,
                                                                 tmp_path):
    # Five scenes on two ranks: rank 0 holds positions 0, 2, 4 and rank 1 positions 1, 3. The image at
    # position 1 is corrupt, so rank 1 has one image fewer: two ranks must give the numbers of one
    # rank on the same set with that image absent (not there at all), paired metrics included.
    corrupt, absent = tmp_path / "corrupt", tmp_path / "absent"
    names = paired_test_folders(demo_folders, corrupt, 5)
    paired_test_folders(demo_folders, absent, 5)
    (corrupt / "testA" / names[1]).write_bytes(b"not a png at all")
    (absent / "testA" / names[1]).unlink()

    def scores(ranks: int, data: Path) -> dict:
        out = tmp_path / f"{data.name}-{ranks}.json"
        launch(ranks, str(ROOT / "scripts/evaluate.py"), "--checkpoint", generators, "--data", data,
               "--inception-weights", inception_weights, "--size", "32", "--batch-size", "1", "--kid-subsets", "5",
               "--json", out)
        return json.loads(out.read_text())

    two, one = scores(2, corrupt), scores(1, absent)
    assert {"AtoB/fid", "AtoB/kid", "AtoB/psnr", "BtoA/ssim"} <= set(two)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key


def test_a_test_size_that_is_no_multiple_of_4_is_evaluated():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 30, 30, generator=g) * 2 - 1 for _ in range(3)]
    split = EvalSplit(["a", "b", "c"], images, ["a", "b", "c"], images[::-1])
    torch.manual_seed(0)
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1))
    evaluator = Evaluator(Accelerator(cpu=True), split, None)
    results = evaluator(net, net)
    assert set(results) == {f"{d}/{m}" for d in ("AtoB", "BtoA") for m in ("l1", "psnr", "ssim")}
    assert all(np.isfinite(v) for v in results.values())
    from cyclegan.translate import Translator  # the numbers are of the translation a user gets

    pixels = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    with torch.no_grad():
        evaluated = evaluator._translate(net, [torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1])[0]
    translated = Translator(net, torch.device("cpu")).translate([pixels])[0]
    assert translated.shape == (30, 30, 3)
    assert np.abs(evaluated.permute(1, 2, 0).numpy().astype(int) - translated.astype(int)).max() <= 1


class ChannelMeans(torch.nn.Module):
    """Features a test can follow: each image's channel means."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))


def test_test_images_that_share_a_key_all_count(demo_folders, tmp_path):
    # hand-made or combined shards may repeat a key: the images are told apart by their position
    g = torch.Generator().manual_seed(0)
    a, b = ([torch.rand(3, 16, 16, generator=g) * scale - 1 for _ in range(6)] for scale in (2, 1))
    shared = EvalSplit(["x"] * 6, a, ["y"] * 6, b)
    unique = EvalSplit([f"x{i}" for i in range(6)], a, [f"y{i}" for i in range(6)], b)
    scores = [Evaluator(Accelerator(cpu=True), split, ChannelMeans(), kid_subsets=2)(torch.nn.Identity(),
                                                                                      torch.nn.Identity())
              for split in (shared, unique)]
    assert scores[0] == scores[1] and scores[0]["AtoB/fid"] > 0
    # positions come from the whole split: an unreadable image leaves a gap, on every layout
    names = paired_test_folders(demo_folders, tmp_path / "data", 3)
    (tmp_path / "data" / "testA" / names[1]).write_bytes(b"not a png at all")
    shares = [load_test_split(tmp_path / "data", 16, rank, 2) for rank in (0, 1)]
    assert [(s.positions_a, s.positions_b) for s in shares] == [([0, 2], [0, 2]), ([], [1])]


def test_paired_only_on_names_that_do_not_pair_is_an_error(generators, demo_folders, tmp_path):
    root = tmp_path / "unpaired"
    paired_test_folders(demo_folders, root, 2)
    for path in (root / "testB").iterdir():
        path.rename(path.with_name("other_" + path.name))
    result = script("evaluate.py", "--checkpoint", generators, "--data", root, "--paired-only", "--size", "32",
                    "--json", tmp_path / "scores.json", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "do not pair" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "scores.json").exists()


# ---- translation


def test_the_default_translation_is_fp32_whatever_the_cpu(generators):
    from cyclegan.cli import translate_parser
    from cyclegan.translate import Translator

    args = translate_parser().parse_args(["--checkpoint", "c", "--input", "i", "--output", "o"])
    assert args.precision == "fp32"
    assert Translator.from_pretrained(generators, device="cpu").bf16 is False
    assert Translator.from_pretrained(generators, device="cpu", precision="bf16").bf16 is True


def _translator(generators: Path):
    from cyclegan.translate import Translator

    return Translator.from_pretrained(generators, device="cpu")


def _image(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() == ".jpg" else "PNG")
    return path


def test_every_input_gets_its_own_output_or_the_run_stops_first(generators, tmp_path):
    from cyclegan.errors import UserError
    from cyclegan.translate.files import translate_files

    cases = tmp_path / "cases"
    for i, name in enumerate(("x.png", "x.PNG", "z.jpg")):
        _image(cases / name, i)
    report = translate_files(_translator(generators), cases, tmp_path / "out")
    assert report.written == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.PNG.png", "x.png", "z.png"]

    clash = tmp_path / "clash"
    for i, name in enumerate(("y.jpg", "y.png", "y.jpg.png")):
        _image(clash / name, i)
    with pytest.raises(UserError, match=r"clash/y\.jpg and .*clash/y\.jpg\.png would both be translated to y\.jpg\.png"):
        translate_files(_translator(generators), clash, tmp_path / "clash-out")
    assert not (tmp_path / "clash-out").exists()


def test_a_linked_folder_in_the_input_is_translated(generators, tmp_path):
    from cyclegan.translate.files import translate_files

    _image(tmp_path / "elsewhere" / "b.png")
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)  # must not loop
    report = translate_files(_translator(generators), tmp_path / "in", tmp_path / "out")
    assert report.written == 2 and (tmp_path / "out" / "linked" / "b.png").is_file()


def test_listing_prefers_real_paths_and_refuses_an_unreadable_folder(tmp_path, monkeypatch):
    import os

    from cyclegan.errors import DataError
    from cyclegan.images import list_images

    _image(tmp_path / "in" / "z" / "real" / "b.png")
    (tmp_path / "in" / "a_link").symlink_to(tmp_path / "in" / "z" / "real", target_is_directory=True)
    assert list_images(tmp_path / "in") == [tmp_path / "in" / "z" / "real" / "b.png"], "listed once, by its real path"
    _image(tmp_path / "in" / "locked" / "c.png")
    scandir = os.scandir

    def refusing(path=".", *args):
        if Path(path).name == "locked":  # as for a folder without read permission (the tests may run as root)
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(DataError, match=r"cannot read folder .*in/locked \(Permission denied\)"):
        list_images(tmp_path / "in")


def test_a_cut_off_video_is_translated_as_far_as_it_goes_and_said_to_be_short(generators, tmp_path, capsys):
    import av

    from cyclegan.translate.run import run

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:  # the frame count up front
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 7 // 10])
    report = run(generators, str(cut), tmp_path / "out.mp4", device="cpu")
    printed = capsys.readouterr().out
    assert 0 < report.written < 20 and (tmp_path / "out.mp4").is_file()
    assert f"warning: {cut}: the container says 20 frame(s), {report.written} could be decoded" in printed


def test_ctrl_c_stops_a_translation_with_one_line(tmp_path):
    import signal
    import subprocess

    torch.manual_seed(0)
    export_generator(ResnetGenerator(GeneratorSpec()), tmp_path / "g_ab.safetensors")  # the paper's: slow enough
    for i in range(24):
        _image(tmp_path / "in" / f"{i:02d}.png", i)
    command = [sys.executable, str(ROOT / "scripts/translate.py"), "--checkpoint", str(tmp_path / "g_ab.safetensors"),
               "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--load-size", "256",
               "--batch-size", "1", "--device", "cpu"]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = lambda: sorted(p.name for p in (tmp_path / "out").glob("*.png"))  # noqa: E731
    deadline = time.monotonic() + 300
    while not done() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)  # mid-work: one output is written, the paper's network is slow on the rest
    out, err = child.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip() and "translate:" not in line]  # not the progress bar
    assert child.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("stopped (interrupted)") and "Traceback" not in err
    finished = {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in done()}
    assert 1 <= len(finished) < 24 and not list((tmp_path / "out").glob(".*.partial")), "no half-written file left"
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    assert len(done()) == 24, "the rerun translates the rest"
    assert {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in finished} == finished, "and keeps those"


# ---- make_shards


def test_make_shards_refuses_one_folder_for_both_domains_and_a_file_as_input(demo_folders, tmp_path):
    from cyclegan.data.shards import find_domains
    from cyclegan.errors import DataError

    folder = demo_folders / "trainA"
    with pytest.raises(DataError, match="are the same folder"):  # spelled another way: x/../trainA
        find_domains(None, folder, demo_folders / "testA" / ".." / "trainA")
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    with pytest.raises(DataError, match="are the same folder"):
        find_domains(None, tmp_path / "link", folder)
    with pytest.raises(DataError, match="nowhere does not exist"):
        find_domains(tmp_path / "nowhere", None, None)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="is a file, not a folder"):
        find_domains(video, None, None)


def test_messages_name_the_installed_program_not_the_script():
    sources = (ROOT / "cyclegan").rglob("*.py")
    offending = [str(p) for p in sources if "benchmarks" not in p.parts
                 and any("scripts/make_shards.py" in line and ("Error(" in line or line.strip().startswith(('"', 'f"')))
                         for line in p.read_text().splitlines())]
    assert not offending


def test_the_runtime_imports_no_benchmark_code():
    import subprocess

    code = ("import sys, cyclegan.trainer, cyclegan.cli, cyclegan.translate, cyclegan.evaluation, cyclegan.export; "
            "print(sorted(m for m in sys.modules if m.startswith('cyclegan.benchmarks')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
