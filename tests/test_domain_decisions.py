"""One deep-path decision per domain split in translation, recorded with the output; leftovers,
locks and messages of the shared I/O at their edges."""

from __future__ import annotations

import fcntl
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.data import shards as data_shards
from cyclegan.data.shards import write_shards
from cyclegan.errors import DataError, UserError
from cyclegan.images import ImageDecodeError
from cyclegan.io import outputs
from cyclegan.io.files import remove_leftovers
from cyclegan.io.formats import encode, probe
from cyclegan.io.outputs import replacement_lock
from cyclegan.io.records import read_json, read_jsonl
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.translate import Translator
from cyclegan.translate import shards as translate_shards_module
from cyclegan.translate.shards import translate_shards
from tests.test_io import translate


def make_mixed_shards(root: Path) -> Path:
    """Shards of domain A whose train split holds a 16-bit image beside an 8-bit one, and whose
    test split holds 8-bit images only."""
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for domain in "AB":
            folder = root / "data" / f"{split}{domain}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
            if split == "train":
                (folder / "b.png").write_bytes(encode(rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16), "png"))
            else:
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "b.png")
    write_shards({(s, d): root / "data" / f"{s}{d}" for s in ("train", "test") for d in "AB"},
                 root / "shards", workers=1, keep_depth=True)
    return root / "shards"


def members(folder: Path) -> list[str]:
    names = []
    for tar_path in sorted(folder.rglob("A-*.tar")):
        with tarfile.open(tar_path) as tar:
            names += [f"{tar_path.parent.name}/{m.name}" for m in tar.getmembers()]
    return sorted(names)


def tiny_translator() -> Translator:
    torch.manual_seed(0)
    return Translator(ResnetGenerator(GeneratorSpec(3, 3, ngf=4, n_blocks=1)), torch.device("cpu"), tile=0)


def test_each_split_of_shards_is_decided_by_its_own_manifest_entry(tmp_path):
    shards = make_mixed_shards(tmp_path)
    translate_shards(tiny_translator(), str(shards), tmp_path / "out", "A")
    assert members(tmp_path / "out") == ["test/a.png", "test/b.png", "train/a.npy", "train/b.npy"], \
        "the 8-bit test split stays on the official path; the train split, with a 16-bit image, is deep"


def test_without_dtypes_a_split_is_not_deep_and_the_shards_are_read_once(tmp_path, monkeypatch):
    shards = make_mixed_shards(tmp_path)
    manifest = json.loads((shards / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split.values():
            entry.pop("dtypes", None)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    opened = []
    real = translate_shards_module.strict_samples
    monkeypatch.setattr(translate_shards_module, "strict_samples", lambda url: opened.append(url) or real(url))
    translate_shards(tiny_translator(), str(shards), tmp_path / "out", "A")
    assert len(opened) == len(set(opened)) == 2, "each shard read once, to translate it: no scan before"
    assert members(tmp_path / "out") == ["test/a.png", "test/b.png", "train/a.png", "train/b.npy"], \
        "as training reads it: each sample by its own depth"


def test_a_rerun_whose_inputs_would_flip_the_deep_decision_is_refused(generator, photos, tmp_path):
    output = tmp_path / "out"
    translate(generator, photos / "trainA", output)
    assert read_json(output / ".translation.json")["deep"] is False
    (photos / "trainA" / "deep.png").write_bytes(encode(np.full((24, 24, 3), 40000, dtype=np.uint16), "png"))
    with pytest.raises(UserError, match=r"made otherwise \(deep: False there, True here\): choose another --output"):
        translate(generator, photos / "trainA", output)
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == ["0.png", "1.png", "2.png"]


def test_leftovers_of_one_output_spare_a_sibling_outputs_staging(tmp_path):
    mine = [tmp_path / ".shards.ab12cd_9.partial", tmp_path / ".shards.x7y8z9.old"]
    sibling = tmp_path / ".shards.v2.ab12cd34.partial"  # make_shards into shards.v2, running now
    for folder in (*mine, sibling):
        folder.mkdir()
        (folder / "A-000000.tar").write_bytes(b"tar")
    remove_leftovers(tmp_path, name="shards")
    assert not any(p.exists() for p in mine)
    assert (sibling / "A-000000.tar").read_bytes() == b"tar"


def test_make_shards_checks_its_output_under_the_lock(tmp_path, monkeypatch):
    held = []
    real = data_shards.prepare_output

    def prepare(output: Path, *args, **kwargs) -> None:
        lock = output.parent / f".{output.name}.lock"
        fd = os.open(lock, os.O_RDWR) if lock.is_file() else None
        try:  # blocked: this run's own lock is taken on another open file
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            if fd is not None:
                os.close(fd)
        real(output, *args, **kwargs)

    monkeypatch.setattr(data_shards, "prepare_output", prepare)
    folder = tmp_path / "trainA"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    write_shards({("train", "A"): folder}, tmp_path / "shards", workers=1)
    assert held == [True]


def test_the_replacement_lock_is_taken_again_when_its_holder_removed_it(tmp_path, monkeypatch):
    """The holder removes the lock file while it still holds it, as it lets go: a run that
    opened the old file meanwhile takes the new one instead of reporting a live run."""
    path = tmp_path / ".shards.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    real, calls = outputs._open_lock, []

    def open_lock(folder: Path, name: str) -> int:
        fd = real(folder, name)
        if not calls:
            path.unlink()  # the holder lets go: removed, still locked
        calls.append(name)
        return fd

    monkeypatch.setattr(outputs, "_open_lock", open_lock)
    try:
        with replacement_lock(tmp_path / "shards"):
            assert path.is_file()
    finally:
        os.close(holder)
    assert len(calls) == 2 and not path.exists()


def test_a_live_holder_of_the_replacement_lock_is_still_refused(tmp_path):
    holder = os.open(tmp_path / ".shards.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(UserError, match="being written by another run"):
            with replacement_lock(tmp_path / "shards"):
                pass
    finally:
        os.close(holder)


def test_a_jsonl_log_is_read_as_strict_utf8_as_a_json_record(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"note": "\xff"}\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 2 "):
        read_jsonl(path)
    path.write_bytes(b'{"step": 1}\n{"note": "caf\xc3')  # cut off inside a character
    assert read_jsonl(path) == [{"step": 1}]
    assert "dropped its last line (2)" in capsys.readouterr().err


def test_unreadable_bytes_are_named_not_quoted(tmp_path):
    with pytest.raises(ImageDecodeError) as caught:
        probe(b"not an image at all, but secret-looking bytes")
    assert str(caught.value).startswith("sample: cannot be decoded") and "secret" not in str(caught.value)
