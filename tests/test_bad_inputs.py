"""Bad input, everywhere at once: every program over a table of damaged, empty, hand-written and
misplaced inputs. For each: a non-zero exit, one line that names the file or key, no traceback,
and no file of the user's removed or changed.

The programs run in this process (their `main` under `sys.argv`, as `python scripts/X.py` runs
them): starting a Python with torch for each of forty cases would cost minutes. What a program
prints goes through the real file descriptors (`capfd`), and an exception that escapes is the
traceback a user would see, so it fails the case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import runpy
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_only_folder, tiny, writable_again

TRAIN = ["--config", str(ROOT / "configs/demo.yaml"), "tracking.mode=disabled", "model.ngf=8", "model.n_blocks=1",
         "model.ndf=8", "model.n_layers_d=1", "data.num_workers=0"]
PROGRESS = re.compile(r".*(\d+%\|.*\||\d+\w* \[\d+:\d\d, )")  # a progress bar's line (tqdm), not a message
CUT_OFF = '{"splits": {"train": {'  # a manifest whose writer died mid-line
NO_SHARDS = json.dumps({"splits": {"train": {"A": {}, "B": {}}}})  # hand-written, without the shard lists


@dataclass
class World:
    """A case's folder (everything in it is the user's) and the session's shared data."""

    tmp: Path
    shards: Path
    folders: Path
    run: Path

    def copy(self, source: Path, name: str) -> Path:
        target = self.tmp / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
        return target

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


@dataclass
class Case:
    name: str
    script: str
    argv: Callable[[World], list[str]]
    names: str  # what the one error line must mention (a file name or a key; {tmp} stands for the case's folder)


def _shards_with_manifest(w: World, manifest: bytes | str | None) -> Path:
    shards = w.copy(w.shards, "shards")
    if manifest is None:
        (shards / "manifest.json").unlink()
    else:
        (shards / "manifest.json").write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    return shards


def _damaged_state(w: World, text: str = '{"step": 3, "epo') -> list[str]:
    run = w.copy(w.run, "run")
    for state in (run / "checkpoints").glob("step_*/state.json"):
        state.write_text(text)
    return TRAIN + [f"data.root={w.shards}", f"output_dir={run}", "resume=auto", "train.max_steps=4"]


def _other_architecture(w: World) -> list[str]:
    return TRAIN + [f"data.root={w.shards}", f"output_dir={w.tmp / 'new'}", f"init_from={w.run}",
                    "model.ngf=16", "train.max_steps=1"]


def _image(w: World) -> Path:
    return next((w.folders / "testA").glob("*.png"))


CASES = [
    # make-shards
    Case("shards: input missing", "make_shards.py", lambda w: ["--input", str(w.tmp / "nowhere"), "--output",
                                                                str(w.tmp / "out")], "nowhere does not exist"),
    Case("shards: input is a file", "make_shards.py", lambda w: ["--input", str(w.file("clip.mp4", b"\0" * 64)),
                                                                  "--output", str(w.tmp / "out")], "clip.mp4 is a file"),
    Case("shards: no trainA", "make_shards.py", lambda w: ["--input", str((w.tmp / "empty").mkdir() or w.tmp / "empty"),
                                                            "--output", str(w.tmp / "out")], "trainA"),
    Case("shards: the same folder twice", "make_shards.py",
         lambda w: ["--domain-a", str(w.copy(w.folders / "trainA", "photos")), "--domain-b", str(w.tmp / "photos"),
                    "--output", str(w.tmp / "out")], "photos"),
    Case("shards: no workers", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data")), "--output", str(w.tmp / "out"), "--workers", "0"],
         "--workers 0"),
    Case("shards: output holds the input", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data/photos")), "--output", str(w.tmp / "data"),
                    "--overwrite"], "photos"),
    Case("shards: output inside the input", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "photos")), "--output", str(w.tmp / "photos" / "trainA" / "packed"),
                    "--overwrite"], "photos"),
    Case("shards: only broken images", "make_shards.py",
         lambda w: ["--domain-a", str(w.file("a/x.png", b"not a png").parent), "--domain-b",
                    str(w.copy(w.folders / "trainB", "b")), "--output", str(w.tmp / "out")], "/a"),
    Case("shards: zero shard size", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data")), "--output", str(w.tmp / "out"), "--shard-size", "0"],
         "--shard-size 0"),
    Case("shards: read-only output", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data")), "--output", str(read_only_folder(w.tmp / "ro") / "shards")],
         "ro"),
    # train
    Case("train: config missing", "train.py", lambda w: ["--config", str(w.tmp / "nope.yaml")], "nope.yaml"),
    Case("train: damaged YAML", "train.py", lambda w: ["--config", str(w.file("bad.yaml", "model: [1, 2\n  x: :"))],
         "bad.yaml"),
    Case("train: unknown key", "train.py", lambda w: TRAIN + ["train.bogus=3"], "train.bogus"),
    Case("train: wrong type", "train.py", lambda w: TRAIN + ["train.lr=fast"], "train.lr"),
    Case("train: impossible value", "train.py", lambda w: TRAIN + ["train.batch_size=0"], "train.batch_size"),
    Case("train: no data", "train.py", lambda w: TRAIN + [f"data.root={w.tmp / 'gone'}",
                                                         f"output_dir={w.tmp / 'o'}"], "gone"),
    Case("train: damaged manifest", "train.py",
         lambda w: TRAIN + [f"data.root={_shards_with_manifest(w, CUT_OFF)}", f"output_dir={w.tmp / 'o'}"],
         "manifest.json"),
    Case("train: empty manifest", "train.py",
         lambda w: TRAIN + [f"data.root={_shards_with_manifest(w, b'')}", f"output_dir={w.tmp / 'o'}"],
         "manifest.json"),
    Case("train: hand-written manifest without shards", "train.py",
         lambda w: TRAIN + [f"data.root={_shards_with_manifest(w, NO_SHARDS)}", f"output_dir={w.tmp / 'o'}"],
         "'shards'"),
    Case("train: empty shards", "train.py",
         lambda w: TRAIN + [f"data.train_a={w.file('e/A-000000.tar', b'')}", f"data.train_b={w.tmp / 'e/A-000000.tar'}",
                            f"output_dir={w.tmp / 'o'}"], "A-000000.tar"),
    Case("train: raw images as data.root", "train.py",
         lambda w: TRAIN + [f"data.root={w.copy(w.folders, 'photos')}", f"output_dir={w.tmp / 'o'}"],
         "cyclegan-make-shards"),
    Case("train: damaged state.json on resume", "train.py", _damaged_state, "state.json"),
    Case("train: warm start from another architecture", "train.py", _other_architecture, "g_ab.safetensors"),
    Case("train: max_steps beyond the schedule", "train.py",
         lambda w: TRAIN + [f"data.root={w.shards}", f"output_dir={w.tmp / 'o'}", "train.max_steps=100000"],
         "train.max_steps"),
    Case("train: PatchNCE layers the generator lacks", "train.py",
         lambda w: TRAIN + ["model.objective=cut", "model.nce_layers=[0,4,40]"], "model.nce_layers"),
    Case("train: PatchNCE layers out of order", "train.py",
         lambda w: TRAIN + ["model.objective=cut", "model.nce_layers=[4,0]"], "model.nce_layers"),
    Case("train: a CUT key in a CycleGAN run", "train.py", lambda w: TRAIN + ["train.lambda_nce=2"], "train.lambda_nce"),
    Case("train: an image pool for CUT", "train.py", lambda w: TRAIN + ["model.objective=cut", "train.pool_size=50"],
         "train.pool_size"),
    Case("train: CUT between unequal channels", "train.py",
         lambda w: TRAIN + ["model.objective=fastcut", "model.output_nc=1", "train.lambda_identity=0"], "model.objective"),
    Case("train: an unknown objective", "train.py", lambda w: TRAIN + ["model.objective=unit"], "model.objective"),
    Case("train: the objective changed on resume", "train.py",
         lambda w: TRAIN + [f"data.root={w.shards}", f"output_dir={w.copy(w.run, 'run')}", "resume=auto",
                            "train.max_steps=4", "model.objective=cut"], "model.objective=cyclegan"),
    # translate
    Case("translate: checkpoint missing", "translate.py",
         lambda w: ["--checkpoint", str(w.tmp / "norun"), "--input", str(_image(w)), "--output", str(w.tmp / "o")],
         "norun"),
    Case("translate: checkpoint not weights", "translate.py",
         lambda w: ["--checkpoint", str(w.file("g.pth", b"hello")), "--input", str(_image(w)), "--output",
                    str(w.tmp / "o")], "g.pth"),
    Case("translate: input missing", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(w.tmp / "nothing.png"), "--output", str(w.tmp / "o")],
         "nothing.png"),
    Case("translate: damaged record", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(w.copy(w.folders / "testA", "in")), "--output",
                    str(w.file("o/.translation.json", '{"input": ').parent)], ".translation.json"),
    Case("translate: read-only output", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(w.copy(w.folders / "testA", "in")), "--output",
                    str(read_only_folder(w.tmp / "ro"))], "cannot write {tmp}/ro"),
    Case("translate: a video into a read-only folder", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(w.file("clip.mp4", b"\0" * 64)), "--output",
                    str(read_only_folder(w.tmp / "ro"))], "ro"),
    Case("translate: corrupt shard manifest", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_shards_with_manifest(w, "[")), "--output",
                    str(w.tmp / "o")], "manifest.json"),
    Case("translate: bad tile", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_image(w)), "--output", str(w.tmp / "o"),
                    "--tile", "-5"], "--tile -5"),
    Case("translate: bad normalisation", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_image(w)), "--output", str(w.tmp / "o"),
                    "--normalize", "range:5,1"], "normalize"),
    # evaluate
    Case("evaluate: checkpoint missing", "evaluate.py",
         lambda w: ["--checkpoint", str(w.tmp / "norun"), "--data", str(w.shards), "--paired-only"], "norun does not exist"),
    Case("evaluate: damaged manifest", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(_shards_with_manifest(w, "{")), "--paired-only"],
         "manifest.json"),
    Case("evaluate: nothing pairs", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(_unpaired(w)), "--paired-only"], "do not pair"),
    Case("evaluate: no Inception weights", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(w.shards), "--inception-weights",
                    str(w.tmp / "inception.pth")], "inception.pth"),
    Case("evaluate: --json over the data's manifest", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(w.shards), "--paired-only", "--json",
                    str(w.shards / "manifest.json")], "manifest.json"),
    Case("evaluate: --json over a generator's sidecar", "evaluate.py",
         lambda w: ["--checkpoint", str(w.copy(w.run / "export", "export")), "--data", str(w.shards), "--paired-only",
                    "--json", str(w.tmp / "export" / "g_ab.json")], "g_ab.json"),
    # export
    Case("export: read-only output", "export.py",
         lambda w: ["--checkpoint", str(w.run), "--format", "hf", "--output", str(read_only_folder(w.tmp / "ro") / "hf")],
         "ro"),
    Case("export: output is the run", "export.py",
         lambda w: ["--checkpoint", str(w.copy(w.run, "run")), "--format", "hf", "--output", str(w.tmp / "run"),
                    "--overwrite"], "run"),
    Case("export: output holds the run", "export.py",
         lambda w: ["--checkpoint", str(w.copy(w.run, "runs/h2z")), "--format", "hf", "--output", str(w.tmp / "runs"),
                    "--overwrite"], "runs"),
    Case("export: truncated weights", "export.py",
         lambda w: ["--checkpoint", str(_truncated_export(w)), "--format", "onnx", "--output", str(w.tmp / "g.onnx")],
         "g_ab.safetensors"),
    Case("export: damaged sidecar", "export.py",
         lambda w: ["--checkpoint", str(_damaged_sidecar(w)), "--format", "onnx", "--output", str(w.tmp / "g.onnx")],
         "g_ab.json"),
    # benchmark
    Case("benchmark: unknown key", "benchmark.py",
         lambda w: ["step", "--size", "32", "--steps", "1", "--warmup", "0", "--repeats", "1", "train.bogus=1"],
         "train.bogus"),
    Case("benchmark: damaged results", "benchmark.py",
         lambda w: ["summary", str(w.file("out/h200-256-b1.json", '{"step": ').parent)], "h200-256-b1.json"),
]


def _unpaired(w: World) -> Path:
    root = w.tmp / "unpaired"
    for domain in "AB":
        (root / f"test{domain}").mkdir(parents=True)
        for i, image in enumerate(sorted((w.folders / f"test{domain}").glob("*.png"))[:2]):
            shutil.copy(image, root / f"test{domain}" / f"{domain}{i}.png")
    return root


def _truncated_export(w: World) -> Path:
    export = w.copy(w.run / "export", "export")
    weights = export / "g_ab.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return export / "g_ab.safetensors"


def _damaged_sidecar(w: World) -> Path:
    export = w.copy(w.run / "export", "export")
    (export / "g_ab.json").write_text('{"ngf": ')
    return export / "g_ab.safetensors"


def _edited_manifest(w: World, change: Callable[[dict], None]) -> Path:
    """A copy of the shards whose manifest `change` edited, as a hand or a script might."""
    shards = w.copy(w.shards, "shards")
    manifest = json.loads((shards / "manifest.json").read_text())
    change(manifest)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return shards


def _without_shard(w: World, shard: str) -> Path:
    """A copy of the shards, one of which the manifest lists was deleted."""
    shards = w.copy(w.shards, "shards")
    (shards / shard).unlink()
    return shards


def _cut_in_a_member(w: World) -> Path:
    """A copy of the shards with train/A-000000.tar cut off inside its third member's data:
    its headers read, the member does not."""
    shards = w.copy(w.shards, "shards")
    tar = shards / "train" / "A-000000.tar"
    with tarfile.open(tar) as opened:
        member = opened.getmembers()[2]
    tar.write_bytes(tar.read_bytes()[:member.offset_data + member.size // 2])
    return shards


def _checkpoint_without_g_ab(w: World) -> Path:
    """A run whose last checkpoint lost g_ab.safetensors (an interrupted copy, a full disk)."""
    run = w.copy(w.run, "run")
    for weights in (run / "checkpoints").glob("step_*/g_ab.safetensors"):
        weights.unlink()
    return run


def _link_to_nowhere(w: World, name: str) -> Path:
    (w.tmp / name).symlink_to(w.tmp / "gone")
    return w.tmp / name


def _train_on(w: World, shards: Path, *more: str) -> list[str]:
    return TRAIN + [f"data.root={shards}", f"output_dir={w.tmp / 'o'}", *more]


def _translate(w: World, checkpoint: Path, source: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(w.tmp / "o")]


def _samples(value: object) -> Callable[[dict], None]:
    return lambda manifest: manifest["splits"]["train"]["A"].__setitem__("samples", value)


def _no_samples(manifest: dict) -> None:
    del manifest["splits"]["train"]["A"]["samples"]


def _clip(w: World) -> Path:
    """A real three-frame video: translated, were its output not refused."""
    import av
    import numpy as np

    path = w.tmp / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for value in (0, 100, 200):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), value, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# in a list of their own, so that rows added to CASES elsewhere do not collide with these
MORE_CASES = [
    Case("train: random bytes for shards", "train.py",
         lambda w: TRAIN + [f"data.train_a={w.file('junk/A-000000.tar', random.Random(0).randbytes(4096))}",
                            f"data.train_b={w.tmp / 'junk/A-000000.tar'}", f"output_dir={w.tmp / 'o'}"],
         "A-000000.tar"),
    Case("train: a listed shard deleted", "train.py",
         lambda w: _train_on(w, _without_shard(w, "train/A-000001.tar")), "A-000001.tar"),
    Case("train: manifest without samples", "train.py",
         lambda w: _train_on(w, _edited_manifest(w, _no_samples)), "'samples'"),
    Case("train: samples not a number", "train.py",
         lambda w: _train_on(w, _edited_manifest(w, _samples("ten"))), "'samples' must be a whole number, not 'ten'"),
    Case("train: shards not a list", "train.py",
         lambda w: _train_on(w, _edited_manifest(w, lambda m: m["splits"]["train"]["A"].__setitem__("shards", 5))),
         "'shards' must be a list"),
    Case("train: splits not an object", "train.py",
         lambda w: _train_on(w, _edited_manifest(w, lambda m: m.__setitem__("splits", []))), "splits"),
    Case("train: step in state.json not a number", "train.py",
         lambda w: _damaged_state(w, '{"step": "x"}'), "state.json"),
    Case("train: resume from a checkpoint without g_ab", "train.py",
         lambda w: ["--config", str(ROOT / "configs/demo.yaml"), *tiny(w.shards, _checkpoint_without_g_ab(w),
                                                                      "resume=auto", "tracking.mode=disabled")],
         "g_ab.safetensors"),
    Case("train: colour shards for a grey model, in loader workers", "train.py",
         lambda w: [a for a in TRAIN if not a.startswith("data.num_workers=")]
         + [f"data.train_a={w.shards}/train/A-{{000000..000001}}.tar",
            f"data.train_b={w.shards}/train/B-{{000000..000002}}.tar", "model.input_nc=1", f"output_dir={w.tmp / 'o'}",
            "train.max_steps=2"], "model.input_nc"),
    Case("translate: shards cut inside a member", "translate.py",  # the rest translated; the shard listed on stdout
         lambda w: _translate(w, w.run, _cut_in_a_member(w)), "1 input(s) could not be read"),
    Case("translate: shards not a list", "translate.py",
         lambda w: _translate(w, w.run, _edited_manifest(w, lambda m: m["splits"]["train"]["A"].__setitem__("shards", 5))),
         "'shards' must be a list"),
    Case("translate: a listed shard deleted", "translate.py",
         lambda w: _translate(w, w.run, _without_shard(w, "train/A-000001.tar")), "A-000001.tar"),
    Case("translate: record not an object", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(w.copy(w.folders / "testA", "in")), "--output",
                    str(w.file("o/.translation.json", '["input"]').parent)], ".translation.json"),
    Case("translate: the output video exists", "translate.py",  # a video is written whole: nothing to resume
         lambda w: ["--checkpoint", str(w.run), "--input", str(_clip(w)), "--output",
                    str(w.file("out.mp4", b"an earlier translation"))], "out.mp4 already exists: remove it"),
    Case("translate: input a dangling link", "translate.py",
         lambda w: _translate(w, w.run, _link_to_nowhere(w, "photo.png")), "photo.png does not exist"),
    Case("translate: a discriminator for a generator", "translate.py",
         lambda w: _translate(w, next(w.run.glob("checkpoints/step_*/d_a.safetensors")), _image(w)),
         "d_a.safetensors"),
    Case("translate: checkpoint without g_ab", "translate.py",
         lambda w: _translate(w, next(_checkpoint_without_g_ab(w).glob("checkpoints/step_*")), _image(w)),
         "g_ab"),
    Case("shards: input a dangling link", "make_shards.py",
         lambda w: ["--input", str(_link_to_nowhere(w, "photos")), "--output", str(w.tmp / "out")],
         "photos does not exist"),
    Case("evaluate: a listed shard deleted", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(_without_shard(w, "test/A-000000.tar")),
                    "--paired-only"], "A-000000.tar"),
    Case("evaluate: --json over a shard of the data", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(w.copy(w.shards, "shards")), "--paired-only", "--json",
                    str(w.tmp / "shards" / "test" / "A-000000.tar")], "A-000000.tar"),
    Case("benchmark: resume position outside the epoch", "benchmark.py",
         lambda w: ["resume", "--workdir", str(w.tmp / "bench"), "--images", "10", "--positions", "10"],
         "--positions 10"),
    Case("benchmark: resume workdir a file", "benchmark.py",
         lambda w: ["resume", "--workdir", str(w.file("bench", "x")), "--images", "10", "--positions", "0"],
         "bench is a file"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` by its content's hash, every link by its target, every folder (a
    removed empty folder or link is a loss too; a folder made read-only is read all the same)."""
    def entry(p: Path) -> str:
        if p.is_symlink():
            return f"link to {os.readlink(p)}"
        return "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(root)): entry(p) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES + MORE_CASES, ids=[c.name for c in CASES + MORE_CASES])
def test_a_bad_input_ends_in_one_line_naming_it(case, tmp_path, demo_shards, demo_folders, trained_run, capfd,
                                               monkeypatch, recwarn, caplog):
    assert len(CASES) >= 30
    world = World(tmp_path, demo_shards, demo_folders, trained_run)
    shared = {p: _snapshot(p) for p in (demo_shards, demo_folders, trained_run)}
    argv = case.argv(world)
    before = _snapshot(tmp_path)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [case.script, *argv])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        with pytest.raises(SystemExit) as ended:
            runpy.run_path(str(ROOT / "scripts" / case.script), run_name="__main__")
    finally:
        writable_again(tmp_path)
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    out, err = capfd.readouterr()
    assert ended.value.code not in (0, None), out + err
    assert "Traceback" not in out + err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.names.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    # in this process a warning or a logged record is caught by pytest, not printed: it would be a second line
    # (of the warnings Python shows by default; these four it hides)
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [str(w.message) for w in recwarn if not issubclass(w.category, hidden)]
    assert not shown, shown
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file of the user's was removed or changed"
    assert {p: _snapshot(p) for p in shared} == shared
    assert os.access(tmp_path, os.W_OK)
