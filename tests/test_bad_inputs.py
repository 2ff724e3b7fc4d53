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
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

TRAIN = ["--config", str(ROOT / "configs/demo.yaml"), "tracking.mode=disabled", "model.ngf=8", "model.n_blocks=1",
         "model.ndf=8", "model.n_layers_d=1", "data.num_workers=0"]
PROGRESS = re.compile(r".*\d+%\|.*\|")  # a progress bar's line (tqdm), not a message
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
    names: str  # what the one error line must mention (a file name or a key)


def _shards_with_manifest(w: World, manifest: bytes | str | None) -> Path:
    shards = w.copy(w.shards, "shards")
    if manifest is None:
        (shards / "manifest.json").unlink()
    else:
        (shards / "manifest.json").write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    return shards


def _damaged_state(w: World) -> list[str]:
    run = w.copy(w.run, "run")
    for state in (run / "checkpoints").glob("step_*/state.json"):
        state.write_text('{"step": 3, "epo')
    return TRAIN + [f"data.root={w.shards}", f"output_dir={run}", "resume=auto", "train.max_steps=4"]


def _other_architecture(w: World) -> list[str]:
    return TRAIN + [f"data.root={w.shards}", f"output_dir={w.tmp / 'new'}", f"init_from={w.run}",
                    "model.ngf=16", "train.max_steps=1"]


def _image(w: World) -> Path:
    return next((w.folders / "testA").glob("*.png"))


CASES = [
    # make-shards
    Case("shards: input missing", "make_shards.py", lambda w: ["--input", str(w.tmp / "nowhere"), "--output",
                                                                str(w.tmp / "out")], "nowhere"),
    Case("shards: input is a file", "make_shards.py", lambda w: ["--input", str(w.file("clip.mp4", b"\0" * 64)),
                                                                  "--output", str(w.tmp / "out")], "clip.mp4"),
    Case("shards: no trainA", "make_shards.py", lambda w: ["--input", str((w.tmp / "empty").mkdir() or w.tmp / "empty"),
                                                            "--output", str(w.tmp / "out")], "trainA"),
    Case("shards: the same folder twice", "make_shards.py",
         lambda w: ["--domain-a", str(w.copy(w.folders / "trainA", "photos")), "--domain-b", str(w.tmp / "photos"),
                    "--output", str(w.tmp / "out")], "photos"),
    Case("shards: no workers", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data")), "--output", str(w.tmp / "out"), "--workers", "0"],
         "--workers"),
    Case("shards: output holds the input", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data/photos")), "--output", str(w.tmp / "data"),
                    "--overwrite"], "photos"),
    Case("shards: output inside the input", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "photos")), "--output", str(w.tmp / "photos" / "trainA"),
                    "--overwrite"], "photos"),
    Case("shards: only broken images", "make_shards.py",
         lambda w: ["--domain-a", str(w.file("a/x.png", b"not a png").parent), "--domain-b",
                    str(w.copy(w.folders / "trainB", "b")), "--output", str(w.tmp / "out")], "/a"),
    Case("shards: zero shard size", "make_shards.py",
         lambda w: ["--input", str(w.copy(w.folders, "data")), "--output", str(w.tmp / "out"), "--shard-size", "0"],
         "--shard-size"),
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
         "shards"),
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
                    str(_read_only(w.tmp / "ro"))], "ro"),
    Case("translate: corrupt shard manifest", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_shards_with_manifest(w, "[")), "--output",
                    str(w.tmp / "o")], "manifest.json"),
    Case("translate: bad tile", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_image(w)), "--output", str(w.tmp / "o"),
                    "--tile", "-5"], "--tile"),
    Case("translate: bad normalisation", "translate.py",
         lambda w: ["--checkpoint", str(w.run), "--input", str(_image(w)), "--output", str(w.tmp / "o"),
                    "--normalize", "range:5,1"], "normalize"),
    # evaluate
    Case("evaluate: checkpoint missing", "evaluate.py",
         lambda w: ["--checkpoint", str(w.tmp / "norun"), "--data", str(w.shards), "--paired-only"], "norun"),
    Case("evaluate: damaged manifest", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(_shards_with_manifest(w, "{")), "--paired-only"],
         "manifest.json"),
    Case("evaluate: nothing pairs", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(_unpaired(w)), "--paired-only"], "paired"),
    Case("evaluate: no Inception weights", "evaluate.py",
         lambda w: ["--checkpoint", str(w.run), "--data", str(w.shards), "--inception-weights",
                    str(w.tmp / "inception.pth")], "inception.pth"),
    # export
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


def _read_only(folder: Path) -> Path:
    """A folder nobody may write into: its mode, and for root (whom modes do not stop) the
    immutable attribute."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    return folder


def _writable_again(root: Path) -> None:
    for folder in [root, *root.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
            folder.chmod(0o755)


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


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` by its content's hash (a folder made read-only is read all the same)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_ends_in_one_line_naming_it(case, tmp_path, demo_shards, demo_folders, trained_run, capfd,
                                               monkeypatch):
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
        _writable_again(tmp_path)
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    out, err = capfd.readouterr()
    assert ended.value.code not in (0, None), out + err
    assert "Traceback" not in out + err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.names in lines[0], lines[0]
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file of the user's was removed or changed"
    assert {p: _snapshot(p) for p in shared} == shared
    assert os.access(tmp_path, os.W_OK)
