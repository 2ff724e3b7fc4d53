"""Exports (ONNX, Hugging Face folders), the Python API, and the programs people type."""

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from cyclegan.export import HubGenerator
from cyclegan.models import GeneratorSpec, ResnetGenerator, load_generator
from cyclegan.models.loading import export_generator
from cyclegan.translate.onnx import OnnxGenerator
from tests.conftest import ROOT, run, script, tiny
from tests.test_models import official_generator_layout

BIN = Path(sys.executable).parent
PROGRAMS = ["cyclegan-train", "cyclegan-make-shards", "cyclegan-translate", "cyclegan-evaluate", "cyclegan-export"]


def program(name, *args, check=True, env=None):
    return run([str(BIN / name), *map(str, args)], check=check, env=env)


@pytest.fixture(scope="module")
def trained_run(demo_shards, tmp_path_factory):
    """A tiny real run folder: config, metrics, a sample grid, checkpoints, export."""
    out = tmp_path_factory.mktemp("run") / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.max_steps=3", "tracking.image_every=3", "tracking.mode=disabled"))
    return out


def test_onnx_matches_pytorch_at_other_sizes_and_translates_without_torch_weights(trained_run, tmp_path):
    result = program("cyclegan-export", "--checkpoint", trained_run, "--format", "onnx", "--output", tmp_path / "g.onnx")
    assert "onnxruntime matches PyTorch within" in result.stdout
    net, onnx_net = load_generator(trained_run), OnnxGenerator(tmp_path / "g.onnx")
    assert onnx_net.spec == net.spec
    for size in ((64, 64), (96, 128), (50, 37)):  # the last: not a multiple of 4, padded as translation pads
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            torch.testing.assert_close(onnx_net(x), net(x) if size[0] % 4 == 0 == size[1] % 4 else
                                       _padded(net, x), rtol=0, atol=1e-4)
    pixels = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    for checkpoint, name in ((tmp_path / "g.onnx", "onnx"), (trained_run, "torch")):
        program("cyclegan-translate", "--checkpoint", checkpoint, "--input", tmp_path / "x.png",
                "--output", tmp_path / name, "--precision", "fp32")
    onnx_out, torch_out = (np.asarray(Image.open(tmp_path / n / "x.png"), dtype=int) for n in ("onnx", "torch"))
    assert np.abs(onnx_out - torch_out).max() <= 1


def _padded(net, x):
    h, w = x.shape[-2:]
    y = net(torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect"))
    return y[..., :h, :w]


def test_an_official_checkpoint_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn(shape) * 0.02 for k, shape in official_generator_layout(ngf=8, n_blocks=2).items()}
    torch.save(state, tmp_path / "latest_net_G_A.pth")
    program("cyclegan-export", "--checkpoint", tmp_path / "latest_net_G_A.pth", "--format", "onnx",
            "--output", tmp_path / "official.onnx")
    net = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2)).eval()
    net.load_state_dict(state)
    x = torch.rand(1, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(OnnxGenerator(tmp_path / "official.onnx")(x), net(x), rtol=0, atol=1e-4)


def test_hugging_face_folder_with_a_model_card_from_the_run(trained_run, tmp_path):
    folder = tmp_path / "hf"
    program("cyclegan-export", "--checkpoint", trained_run, "--format", "hf", "--output", folder, "--direction", "BtoA")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors", "sample.png"]
    loaded, original = HubGenerator.from_pretrained(folder), load_generator(trained_run, direction="BtoA")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    assert "model.1.weight" in loaded.state_dict(), "the official keys"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "cyclegan" and "image-to-image" in card.data.tags
    text = card.text
    for fact in ("ngf=8, n_blocks=1", "training images: A 160, B 160", "trained 3 optimizer steps",
                 "global batch 2 (2 per device x 1 accumulation x 1 process(es))", "precision fp32",
                 "final losses: adv_ab", "![sample grid](sample.png)"):
        assert fact in text, fact
    offline = program("cyclegan-export", "--checkpoint", trained_run, "--format", "hf", "--output", tmp_path / "up",
                      "--push-to-hub", "someone/cyclegan-test", check=False, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "could not upload to the Hugging Face Hub repo someone/cyclegan-test" \
        in offline.stderr and "Traceback" not in offline.stderr
    assert (tmp_path / "up" / "model.safetensors").is_file(), "the export is kept for a later upload"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not onnx at all"), "is not a readable ONNX model"),
    (lambda p: p.write_bytes(p.with_name("good.onnx").read_bytes()[:2000]), "is not a readable ONNX model"),
])
def test_bad_onnx_files_get_clear_messages(tmp_path, make, message):
    export_generator(ResnetGenerator(GeneratorSpec(ngf=4, n_blocks=1)), tmp_path / "g.safetensors")
    program("cyclegan-export", "--checkpoint", tmp_path / "g.safetensors", "--format", "onnx",
            "--output", tmp_path / "good.onnx")
    make(tmp_path / "bad.onnx")
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    result = program("cyclegan-translate", "--checkpoint", tmp_path / "bad.onnx", "--input", tmp_path / "x.png",
                     "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_broken_hugging_face_folders_get_clear_messages(tmp_path):
    HubGenerator(ngf=4, n_blocks=1).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text("{not json")
    result = program("cyclegan-translate", "--checkpoint", tmp_path / "hf", "--input", tmp_path / "hf",
                     "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "config.json is not a valid generator description" in result.stderr


def test_the_readme_python_example_runs(trained_run, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(from cyclegan import Translator.*?)```", readme, re.S).group(1)
    (tmp_path / "runs" / "h2z").mkdir(parents=True)
    (tmp_path / "runs" / "h2z" / "export").symlink_to(trained_run / "export")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(tmp_path / "horse.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["zebra"].size == (61, 45) and scope["batch"].shape == (2, 3, 64, 64)


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_answers_help(name):
    assert "usage:" in program(name, "--help").stdout


def readme_commands():
    """Every command in the README's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_commands_name_real_programs_and_options():
    """Each command runs a program that exists and is executable, with options its --help knows."""
    checked = 0
    for command in readme_commands():
        words = shlex.split(command)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the program
            words = words[1:]
        if words[:2] in (["make", "demo"], ["make", "test"], ["make", "test-kernels"]) or not words:
            continue
        if words[0].endswith(("wandb", "tensorboard", "huggingface-cli", "sbatch")):
            continue  # other projects' programs
        if words[0].endswith("/python"):
            words = words[1:]
        if words[0].endswith("accelerate"):
            words = [w for w in words if w.endswith(".py")][:1] + words[[i for i, w in enumerate(words)
                                                                        if w.endswith(".py")][0] + 1:]
        target = ROOT / words[0]
        assert target.is_file() and target.stat().st_mode & 0o111, f"{words[0]} in: {command}"
        helptext = run([str(target), "--help"], env={"PATH": f"{BIN}:/usr/bin:/bin"}).stdout
        for option in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
            assert option in helptext, f"{option} of {words[0]} in: {command}"
        checked += 1
    assert checked >= 15
