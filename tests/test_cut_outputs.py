"""Every output path with a CUT model (model.objective=cut: one anti-aliased generator, A -> B):
translation of images, tiles, shards and video, ONNX and Hugging Face exports, the Translator API,
evaluation; B -> A refused at each entry point; the official CUT files load as our export."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from cyclegan import Translator, cli, evaluation
from cyclegan.errors import UserError
from cyclegan.export import HubGenerator, card_body, export_hf, run_facts
from cyclegan.models import GeneratorSpec, ResnetGenerator, load_generator
from cyclegan.models.loading import recorded_objective
from cyclegan.translate.onnx import OnnxGenerator
from tests.test_evaluation import SmallFeatures
from tests.test_translate import make_clip, psnr, read_clip

ONE_WAY = "translates A -> B only: use direction AtoB"


@pytest.fixture
def call(monkeypatch, capsys):
    """A program's main run in this process, as its console script runs it: (exit code, stdout,
    stderr)."""
    from accelerate.state import AcceleratorState, PartialState

    def run(main, *args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", [main.__name__, *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as end:
            code = end.code
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            PartialState._reset_state()
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def official_cut(cut_run, tmp_path_factory) -> Path:
    """The CUT run's newest weights saved as the official CUT code saves them: the same keys."""
    folder = tmp_path_factory.mktemp("official-cut")
    checkpoint = next((cut_run / "checkpoints").iterdir())
    for ours, theirs in (("g_ab", "G"), ("d_b", "D"), ("f", "F")):
        torch.save(load_file(str(checkpoint / f"{ours}.safetensors")), folder / f"latest_net_{theirs}.pth")
    return folder


@pytest.fixture(scope="module")
def official_cut_alone(official_cut, tmp_path_factory) -> Path:
    """The official CUT generator without its head, as CUT's pretrained models come: `latest_net_G.pth` alone."""
    folder = tmp_path_factory.mktemp("official-cut-alone")
    (folder / "latest_net_G.pth").write_bytes((official_cut / "latest_net_G.pth").read_bytes())
    return folder


@pytest.fixture
def cut_hf(cut_run, tmp_path) -> Path:
    """The CUT run's Hugging Face export, without its run."""
    export_hf(load_generator(cut_run), tmp_path / "hf", "AtoB", cut_run / "export" / "g_ab.safetensors", None)
    return tmp_path / "hf"


def random_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_a_cut_run_translates_images_exact_tiles_a_shard_and_a_video(cut_run, demo_shards, tmp_path, call):
    random_image(tmp_path / "in" / "odd.png", (45, 37))
    random_image(tmp_path / "in" / "even.png", (48, 40), seed=1)
    for tile in ("0", "16"):  # whole, and tiles through every anti-aliased down- and upsampling
        code, out, err = call(cli.translate, "--checkpoint", cut_run, "--input", tmp_path / "in",
                              "--output", tmp_path / tile, "--tile", tile, "--device", "cpu")
        assert code == 0 and "translated 2 image(s)" in out, err
    for name, size in (("odd.png", (45, 37)), ("even.png", (48, 40))):
        whole, tiled = (np.asarray(Image.open(tmp_path / t / name)) for t in ("0", "16"))
        assert whole.shape == (*size[::-1], 3) and psnr(tiled, whole) > 60, name
    code, out, err = call(cli.translate, "--checkpoint", cut_run / "export", "--input",
                          demo_shards / "test" / "A-000000.tar", "--output", tmp_path / "shards", "--device", "cpu")
    assert code == 0 and "translated 24 sample(s)" in out, err
    with tarfile.open(tmp_path / "shards" / "A-000000.tar") as tar:
        assert len(tar.getnames()) == 24
    make_clip(tmp_path / "clip.mkv", frames=6, audio=False)
    code, out, err = call(cli.translate, "--checkpoint", cut_run, "--input", tmp_path / "clip.mkv",
                          "--output", tmp_path / "clip-b.mkv", "--device", "cpu")
    frames, _, _ = read_clip(tmp_path / "clip-b.mkv")
    assert code == 0 and len(frames) == 6 and frames[0].shape == (48, 64, 3), err


def test_onnx_and_hugging_face_exports_of_a_cut_run(cut_run, tmp_path, call):
    net = load_generator(cut_run)
    code, out, err = call(cli.export, "--checkpoint", cut_run, "--format", "onnx", "--output", tmp_path / "g.onnx")
    assert code == 0 and "onnxruntime matches PyTorch" in out, err
    onnx_net = OnnxGenerator(tmp_path / "g.onnx")
    assert onnx_net.spec == net.spec and net.spec.antialias and onnx_net.direction == "AtoB"
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():  # the fixed blur filters as grouped convolutions in the graph
        torch.testing.assert_close(onnx_net(x), net(x), rtol=0, atol=1e-4)
    with pytest.raises(UserError, match="holds the AtoB generator, but BtoA was asked for"):
        Translator.from_pretrained(tmp_path / "g.onnx", direction="BtoA")

    code, out, err = call(cli.export, "--checkpoint", cut_run, "--format", "hf", "--output", tmp_path / "hf")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "app.py", "config.json", "cyclegan",
                                                                    "examples", "identity.png", "model.safetensors",
                                                                    "requirements.txt", "sample.png"]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["antialias"] is True and config["objective"] == "cut" and config["direction"] == "AtoB"
    loaded = HubGenerator.from_pretrained(tmp_path / "hf")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    text = ModelCard.load(tmp_path / "hf" / "README.md").text
    for fact in ("# CUT generator AtoB", "A CUT (contrastive unpaired translation", "anti-aliased",
                 "It translates A to B only", "lambda_NCE 1.0", "each row real A | G(A)",
                 "each row real B | identity G(B)", "![identity grid](identity.png)"):
        assert fact in text, fact
    assert "reconstructed" not in text and "lambda_cycle" not in text
    image = Image.open(random_image(tmp_path / "x.png", (45, 37)))
    from_hf, from_run = (np.asarray(Translator.from_pretrained(s, precision="fp32")(image))
                         for s in (tmp_path / "hf", cut_run))
    assert np.array_equal(from_hf, from_run)


SOURCES = {"run": lambda run, official, alone, hf: run,
           "export": lambda run, official, alone, hf: run / "export",
           "export file": lambda run, official, alone, hf: run / "export" / "g_ab.safetensors",
           "checkpoint": lambda run, official, alone, hf: next((run / "checkpoints").iterdir()),
           "official": lambda run, official, alone, hf: official,
           "official file": lambda run, official, alone, hf: official / "latest_net_G.pth",
           "official without F": lambda run, official, alone, hf: alone,
           "official file without F": lambda run, official, alone, hf: alone / "latest_net_G.pth",
           "hugging face": lambda run, official, alone, hf: hf,
           "hugging face file": lambda run, official, alone, hf: hf / "model.safetensors"}


@pytest.mark.parametrize("source", list(SOURCES))
def test_b_to_a_is_refused_at_every_entry_point(source, cut_run, official_cut, official_cut_alone, cut_hf, tmp_path,
                                                call):
    folder = SOURCES[source](cut_run, official_cut, official_cut_alone, cut_hf)
    image = random_image(tmp_path / "x.png", (32, 32))
    with pytest.raises(UserError, match=ONE_WAY):
        Translator.from_pretrained(folder, direction="BtoA")
    for main, args in ((cli.translate, ["--input", image, "--output", tmp_path / "out"]),
                       (cli.export, ["--format", "onnx", "--output", tmp_path / "g.onnx"]),
                       (cli.export, ["--format", "hf", "--output", tmp_path / "hf-b"])):
        code, out, err = call(main, "--checkpoint", folder, "--direction", "BtoA", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and ONE_WAY in lines[0] and "Traceback" not in err, (main, err)
    assert not any((tmp_path / name).exists() for name in ("out", "g.onnx", "hf-b")), "refused before any work"


def test_evaluation_of_a_cut_run_scores_a_to_b_alone(cut_run, demo_shards, tmp_path, call, monkeypatch):
    # features of a small fixed network stand in for Inception's (its 2048-wide FID alone takes seconds)
    monkeypatch.setattr(evaluation, "load_inception", lambda path: SmallFeatures())
    code, out, err = call(cli.evaluate, "--checkpoint", cut_run, "--data", demo_shards, "--inception-weights",
                          "inception.pth", "--size", "32", "--max-images", "8", "--kid-subsets", "5",
                          "--json", tmp_path / "scores.json")
    assert code == 0, err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert set(scores) == {f"AtoB/{m}" for m in ("fid", "kid", "kid_std", "l1", "psnr", "ssim")}
    table = out.splitlines()
    assert table[0].split() == ["direction", "fid", "kid", "kid_std", "l1", "psnr", "ssim"]
    assert table[1].startswith("AtoB") and not any(line.startswith("BtoA") for line in table)


@pytest.mark.parametrize("source", ["export file", "official file", "official without F", "hugging face file"])
def test_evaluation_of_one_cut_file_or_a_lone_generator_scores_a_to_b(source, cut_run, official_cut,
                                                                      official_cut_alone, cut_hf, demo_shards,
                                                                      tmp_path, call):
    scores = {}
    for name, checkpoint in (("run", cut_run), ("one", SOURCES[source](cut_run, official_cut, official_cut_alone,
                                                                         cut_hf))):
        code, out, err = call(cli.evaluate, "--checkpoint", checkpoint, "--data", demo_shards, "--paired-only",
                              "--size", "32", "--max-images", "8", "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert scores["one"] == scores["run"] and set(scores["one"]) == {"AtoB/l1", "AtoB/psnr", "AtoB/ssim"}


def test_an_unreadable_record_says_nothing_of_the_objective(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    assert recorded_objective(tmp_path) is None  # the weights load without it; the reader of the spec reports it
    (tmp_path / "state.json").write_text(json.dumps({"model": {"objective": "cut"}}))
    assert recorded_objective(tmp_path) == "cut"
    hf = tmp_path / "hf"
    HubGenerator(ngf=4, n_blocks=1).save_pretrained(hf)
    assert recorded_objective(hf) == "cyclegan", "a Hugging Face config without `objective` is a CycleGAN export's"
    (hf / "config.json").write_text("{not json")
    assert recorded_objective(hf) is None


def test_anti_aliased_cyclegan_generators_keep_both_directions(tmp_path, call):
    """The official CUT code's `--model cycle_gan` writes anti-aliased latest_net_G_A/B.pth: a pair, not CUT."""
    official = tmp_path / "official"
    official.mkdir()
    spec = GeneratorSpec(ngf=4, n_blocks=1, antialias=True)
    for name in ("latest_net_G_A.pth", "latest_net_G_B.pth"):
        torch.save(ResnetGenerator(spec).state_dict(), official / name)
    image = random_image(tmp_path / "x.png", (32, 32))
    for checkpoint in (official, official / "latest_net_G_B.pth"):
        assert Translator.from_pretrained(checkpoint, direction="BtoA").direction == "BtoA"
    g_ab, g_ba = evaluation.load_generator_pair(official)
    assert g_ab.spec == g_ba.spec == spec
    code, _, err = call(cli.export, "--checkpoint", official / "latest_net_G_B.pth", "--format", "hf", "--output",
                        tmp_path / "hf")
    assert code == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["direction"] == "BtoA" and "objective" not in config and config["antialias"] is True
    assert Translator.from_pretrained(tmp_path / "hf")(Image.open(image)).size == (32, 32)
    # control: the same weights named for no direction are taken for CUT's G, one way
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "latest_net_G.pth").write_bytes((official / "latest_net_G_B.pth").read_bytes())
    with pytest.raises(UserError, match=ONE_WAY):
        Translator.from_pretrained(tmp_path / "cut", direction="BtoA")


def test_the_pretrained_cyclegan_layout_is_scored_one_way_and_still_translates_b_to_a(tmp_path, caplog):
    folder = tmp_path / "horse2zebra"
    folder.mkdir()
    torch.save(ResnetGenerator(GeneratorSpec(ngf=4, n_blocks=1)).state_dict(), folder / "latest_net_G.pth")
    g_ab, g_ba = evaluation.load_generator_pair(folder)
    assert g_ba is None and "holds one generator, latest_net_G.pth: it is scored A -> B alone" in caplog.text
    # control: no blur filters, so not taken for CUT: a user may still run this one network as B -> A
    assert Translator.from_pretrained(folder, direction="BtoA").direction == "BtoA"


def test_a_head_less_official_cut_file_exports_as_cut(official_cut_alone, tmp_path):
    weights = official_cut_alone / "latest_net_G.pth"
    export_hf(load_generator(weights), tmp_path / "hf", "AtoB", weights, None)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["objective"] == "cut"
    assert "# CUT generator AtoB" in ModelCard.load(tmp_path / "hf" / "README.md").text


@pytest.mark.parametrize("antialias, objective, says, not_says", [
    (True, "cut", "official CUT implementation's state_dict keys, so its code loads them;", "cycle_gan"),
    (True, "cyclegan", "so its code loads them as a generator (G_A or G_B) of its `--model cycle_gan`; the official "
     "CycleGAN code cannot", "--no_antialias"),
    (False, "cut", "the official CycleGAN code loads them, and so does the official CUT code with `--no_antialias "
     "--no_antialias_up`", "cannot"),
    (False, "cyclegan", "the official CycleGAN code loads them", "cannot")])
def test_the_card_names_the_official_code_that_loads_each_layout(antialias, objective, says, not_says, tmp_path):
    text = card_body(GeneratorSpec(ngf=4, n_blocks=1, antialias=antialias), "AtoB", tmp_path / "g.safetensors",
                     None, [], objective)
    assert says in text and not_says not in text


def test_the_fastcut_card_tells_its_flip_equivariance(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"train": {"flip_equivariance": True, "nce_idt": False}}))
    weighting = run_facts(tmp_path, tmp_path / "export" / "g_ab.safetensors", "AtoB", "fastcut")[0]
    assert "identity NCE False, flip equivariance True" in weighting


def test_the_official_cut_files_load_and_translate_as_our_export(cut_run, official_cut, demo_shards, tmp_path, call):
    assert load_generator(official_cut).spec == load_generator(cut_run).spec  # anti-aliasing read off `filt`
    image = Image.open(random_image(tmp_path / "x.png", (45, 37)))
    official, ours = (np.asarray(Translator.from_pretrained(s, precision="fp32")(image))
                      for s in (official_cut, cut_run / "export"))
    assert np.array_equal(official, ours)
    paired = {}
    for name, source in (("official", official_cut), ("ours", cut_run / "export")):
        code, out, err = call(cli.evaluate, "--checkpoint", source, "--data", demo_shards, "--paired-only",
                              "--size", "32", "--max-images", "8", "--json", tmp_path / f"{name}.json")
        assert code == 0, err
        paired[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert paired["official"] == paired["ours"] and set(paired["ours"]) == {"AtoB/l1", "AtoB/psnr", "AtoB/ssim"}
    # control: the file's own blur filters are the ones used, not filters rebuilt by the loader
    state = torch.load(official_cut / "latest_net_G.pth", weights_only=True)
    changed = tmp_path / "changed"
    changed.mkdir()
    torch.save({k: v * 0.9 if k.endswith(".filt") else v for k, v in state.items()}, changed / "latest_net_G.pth")
    assert not np.array_equal(np.asarray(Translator.from_pretrained(changed, precision="fp32")(image)), ours)
