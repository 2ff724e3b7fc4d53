"""Exports (ONNX, Hugging Face folders), the Python API, and the programs people type."""

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from cyclegan import Translator, cli
from cyclegan.config import load_config
from cyclegan.errors import CheckpointError, UserError
from cyclegan.export import HubGenerator
from cyclegan.models import GeneratorSpec, ResnetGenerator, load_generator
from cyclegan.models.loading import export_generator
from cyclegan.translate.onnx import OnnxGenerator
from tests.conftest import ROOT, run
from tests.test_models import official_generator_layout

BIN = Path(sys.executable).parent
PROGRAMS = ["cyclegan-train", "cyclegan-make-shards", "cyclegan-translate", "cyclegan-evaluate", "cyclegan-export",
            "cyclegan-demo"]


def program(name, *args, check=True, env=None):
    return run([str(BIN / name), *map(str, args)], check=check, env=env)


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
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "app.py", "config.json", "cyclegan", "examples",
                                                        "model.safetensors", "requirements.txt", "sample.png"]
    assert [p.parent.name for p in (folder / "examples").rglob("*.png")] == ["B"] * 3, "B's test images, as inputs"
    loaded, original = HubGenerator.from_pretrained(folder), load_generator(trained_run, direction="BtoA")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
    assert "model.1.weight" in loaded.state_dict(), "the official keys"
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "cyclegan" and "image-to-image" in card.data.tags
    text = card.text
    for fact in ("translating domain B to domain A", "ngf=8, n_blocks=1", "images: test a 24, test b 24, train a 160, "
                 "train b 160", "these weights: optimizer step 3, the trained generator", "losses logged at step 3: adv_ab",
                 "global batch 2 (2 per device x 1 accumulation x 1 process(es))", "precision fp32",
                 "![sample grid](sample.png)"):
        assert fact in text, fact
    config = json.loads((folder / "config.json").read_text())
    assert config["direction"] == "BtoA"
    assert not {"objective", "antialias"} & set(config), "a CycleGAN export keeps the keys older releases read"
    translator = Translator.from_pretrained(folder)
    assert translator.direction == "BtoA", "the folder says which way it translates"
    with pytest.raises(UserError, match="holds the BtoA generator, but AtoB was asked for"):
        Translator.from_pretrained(folder, direction="AtoB")
    offline = program("cyclegan-export", "--checkpoint", trained_run, "--format", "hf", "--output", tmp_path / "up",
                      "--push-to-hub", "someone/cyclegan-test", check=False, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "could not upload to the Hugging Face Hub repo someone/cyclegan-test" \
        in offline.stderr and "Traceback" not in offline.stderr
    assert (tmp_path / "up" / "model.safetensors").is_file(), "the export is kept for a later upload"


def test_the_card_tells_which_evaluation_belongs_to_the_weights(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    (run / "best").mkdir()
    (run / "best" / "best.json").write_text(json.dumps({"step": 2, "fid": 10.0, "results": {
        "AtoB/fid": 10.0, "AtoB/kid": 0.5, "BtoA/fid": 20.0}}))
    program("cyclegan-export", "--checkpoint", run, "--format", "hf", "--output", tmp_path / "hf")
    text = ModelCard.load(tmp_path / "hf" / "README.md").text
    assert "best evaluation (the trained generators of step 2, in best/): fid 10.0000, kid 0.5000" in text
    assert "20.0000" not in text, "only the exported direction's scores"
    again = program("cyclegan-export", "--checkpoint", run, "--format", "hf", "--output", tmp_path / "hf", check=False)
    assert again.returncode == 2 and "exists: pass --overwrite" in again.stderr
    program("cyclegan-export", "--checkpoint", run / "export" / "g_ba.safetensors", "--format", "hf",
            "--output", tmp_path / "hf", "--overwrite")
    assert "translating domain B to domain A" in ModelCard.load(tmp_path / "hf" / "README.md").text, \
        "a file's name says its direction"
    onnx_push = program("cyclegan-export", "--checkpoint", run, "--format", "onnx", "--output", tmp_path / "g.onnx",
                        "--push-to-hub", "me/x", check=False)
    assert onnx_push.returncode == 2 and "use it with --format hf" in onnx_push.stderr


def test_every_kind_of_source_loads_through_the_python_api(trained_run, tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = {k: torch.randn(shape) * 0.02 for k, shape in official_generator_layout(ngf=8, n_blocks=1).items()}
    (tmp_path / "official").mkdir()
    torch.save(state, tmp_path / "official" / "latest_net_G.pth")  # the pretrained downloads' layout
    export = trained_run / "export"
    sources = [trained_run, export, export / "g_ab.safetensors", tmp_path / "official",
               tmp_path / "official" / "latest_net_G.pth"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("RGBA")
    for source in sources:
        out = Translator.from_pretrained(source, precision="fp32")(image)
        assert out.size == (30, 20) and out.mode == "RGB", source
    chw = Translator.from_pretrained(export, precision="fp32")(torch.zeros(3, 16, 24))
    assert chw.shape == (3, 16, 24)
    with pytest.raises(UserError, match="too small"):
        Translator.from_pretrained(export)(torch.zeros(1, 3, 4, 4))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="nobody/no-such-model is no local file or folder, and could not be fetched"):
        Translator.from_pretrained("nobody/no-such-model")
    with pytest.raises(CheckpointError, match="does not exist"):
        Translator.from_pretrained(tmp_path / "official" / "nothing.pth")  # a local typo: no Hub call
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CheckpointError, match="install onnxruntime"):
        OnnxGenerator(tmp_path / "any.onnx")


def test_evaluation_refuses_a_single_generator(trained_run):
    result = program("cyclegan-evaluate", "--checkpoint", trained_run / "export" / "g_ab.safetensors",
                     "--data", trained_run, "--paired-only", check=False)
    assert result.returncode == 2 and "holds one generator; evaluation needs both directions" in result.stderr


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
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    for name, damage, message in (("config", lambda f: (f / "config.json").write_text("{not json"),
                                   "config.json: not valid JSON"),
                                  ("weights", lambda f: (f / "model.safetensors").write_bytes(
                                      (f / "model.safetensors").read_bytes()[:1000]), "not a readable safetensors file")):
        folder = tmp_path / name
        HubGenerator(ngf=4, n_blocks=1).save_pretrained(folder)
        damage(folder)
        result = program("cyclegan-translate", "--checkpoint", folder, "--input", tmp_path / "x.png",
                         "--output", tmp_path / f"out-{name}", check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, name


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


PARSERS = {"cyclegan-train": cli.train_parser, "train.py": cli.train_parser,
           "cyclegan-make-shards": cli.make_shards_parser, "cyclegan-translate": cli.translate_parser,
           "translate.py": cli.translate_parser, "cyclegan-evaluate": cli.evaluate_parser,
           "evaluate.py": cli.evaluate_parser, "cyclegan-export": cli.export_parser, "cyclegan-demo": cli.demo_parser}


def test_readme_commands_parse_with_the_programs_they_name():
    """Each command names a program that exists, is executable and accepts exactly these arguments
    (options, values, required ones; for training, config keys too)."""
    checked = set()
    for command in readme_commands():
        words, elided = [w for w in shlex.split(command) if w != "..."], "..." in command
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value before the program
            words = words[1:]
        if not words or words[0] in ("make", "sbatch") or words[0].endswith(("/wandb", "/tensorboard", "/hf")):
            continue  # make's targets and other projects' programs
        if words[0].endswith("/accelerate"):
            words = words[next(i for i, w in enumerate(words) if w.endswith(".py")):]
        assert (ROOT / words[0]).is_file() and os.access(ROOT / words[0], os.X_OK), command
        parser = PARSERS[Path(words[0]).name]
        if elided:  # "..." stands for arguments shown before: the options given must exist
            known = parser()._option_string_actions
            assert all(w.split("=")[0] in known for w in words[1:] if w.startswith("--")), command
        else:
            try:
                args = parser().parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"the program rejects: {command}")
            if parser is cli.train_parser:
                load_config(args.config, args.overrides)
        checked.add(Path(words[0]).name)
    assert checked >= {"cyclegan-make-shards", "cyclegan-train", "train.py", "cyclegan-translate", "translate.py",
                       "cyclegan-evaluate", "evaluate.py", "cyclegan-export"}
