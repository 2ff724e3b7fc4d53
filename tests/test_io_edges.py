"""The shared I/O at its edges: inputs given by pattern, outputs that cannot be written or
locked, leftovers of killed writers, records of older versions, flushed folders."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan.errors import DataError, UserError
from cyclegan.io.files import atomic_folder, atomic_path, atomic_write, replace_folder
from cyclegan.io.outputs import LOCK, lock_holder, output_lock, prepare_output
from cyclegan.io.records import read_json, read_jsonl, write_json
from tests.conftest import read_only_folder, writable_again
from tests.test_io import snapshot, translate


def shards_of(photos: Path, tmp_path: Path) -> Path:
    from cyclegan.data.shards import find_domains, write_shards

    write_shards(find_domains(photos, None, None), tmp_path / "shards", shard_size=2, workers=1)
    return tmp_path / "shards" / "train"


def test_shards_given_by_pattern_or_list_are_never_translated_over(generator, photos, tmp_path):
    train = shards_of(photos, tmp_path)
    before = snapshot(train)
    for spec in (f"{train}/A-{{000000..000001}}.tar", f"{train}/A-000000.tar,{train}/A-000001.tar"):
        with pytest.raises(UserError, match=r"A-00000[01]\.tar .*would overwrite it"):
            translate(generator, spec, train)
        assert {k: v for k, v in snapshot(train).items() if k != LOCK} == before
    translate(generator, f"{train}/A-{{000000..000001}}.tar", tmp_path / "out")  # elsewhere, as ever
    assert (tmp_path / "out" / "A-000001.tar").is_file()


def test_a_translation_may_write_beside_its_input_or_checkpoint(generator, photos, tmp_path):
    image = photos / "trainA" / "0.png"
    translate(generator, image, photos)  # --input horse.jpg --output . : the output holds the input
    translate(generator, image, generator.parent)  # --checkpoint model.pth --output .
    assert (photos / "0.png").is_file() and (generator.parent / "0.png").is_file()


def test_an_export_may_add_a_file_inside_the_run_but_not_replace_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    prepare_output(run / "h2z.onnx", [run], overwrite=False, staged=True, nested=True)
    with pytest.raises(UserError, match=r"run is an input of this command"):
        prepare_output(run, [run], overwrite=True, staged=True, nested=True)


def test_a_failed_input_check_leaves_no_record_so_the_corrected_rerun_goes_on(generator, photos, tmp_path):
    output = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        translate(generator, tmp_path / "empty", output)
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(photos / "trainA" / "0.png", clash / "y.jpg")
    shutil.copy(photos / "trainA" / "1.png", clash / "y.png")  # so y.jpg -> y.jpg.png ...
    shutil.copy(photos / "trainA" / "2.png", clash / "y.jpg.png")  # ... which this one also gives
    with pytest.raises(UserError, match="would both be translated"):
        translate(generator, clash, output)
    assert not (output / ".translation.json").exists()
    translate(generator, photos / "trainA", output)
    assert (output / "0.png").is_file()


def test_an_older_record_of_the_raw_input_is_the_same_translation(generator, photos, tmp_path, monkeypatch):
    output = tmp_path / "out"
    translate(generator, photos / "trainA", output)
    record = read_json(output / ".translation.json")
    monkeypatch.chdir(tmp_path)
    write_json(output / ".translation.json", {**record, "input": "photos/trainA/"})  # as older versions wrote it
    (output / "0.png").unlink()
    translate(generator, "photos/trainA", output)
    assert (output / "0.png").is_file()


HOLD_SHARED = """
import sys, time
from cyclegan.io.outputs import join_output_lock
with join_output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_rank_that_outlives_its_main_process_keeps_the_output_and_its_files(tmp_path):
    """The main rank died; another still writes: a rerun is refused and its half-written file stays."""
    output = tmp_path / "out"
    with output_lock(output):  # the main rank, which then dies
        rank = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, str(output)], stdout=subprocess.PIPE, text=True)
        assert rank.stdout.readline().strip() == "held"
    try:
        in_flight = output / ".3.png.k3j4.partial"
        in_flight.write_bytes(b"half")
        with pytest.raises(UserError, match="being written by another run"):
            with output_lock(output):
                pass
        assert in_flight.is_file() and lock_holder(output)
    finally:
        rank.kill()
        rank.wait()
    with output_lock(output):  # every rank gone: the next run takes it and clears the leftovers
        assert not in_flight.exists()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_that_cannot_lock_is_warned_about_once(generator, photos, tmp_path, monkeypatch, capsys, code):
    def unsupported(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    translate(generator, photos / "trainA", tmp_path / "out")
    assert lock_holder(tmp_path / "out") is None
    with output_lock(tmp_path / "out"):
        pass
    assert capsys.readouterr().err.count("cannot lock files") == 1
    assert (tmp_path / "out" / "0.png").is_file()


def test_failed_writes_are_one_line_naming_the_path(tmp_path):
    folder = read_only_folder(tmp_path / "ro")
    try:
        for write in (lambda: atomic_write(folder / "x.json", "{}"),
                      lambda: atomic_folder(folder / "shards").__enter__()):
            with pytest.raises(UserError, match=r"cannot write .*ro/(x\.json|shards) \((Permission denied|Operation not permitted)\)"):
                write()
    finally:
        writable_again(tmp_path)
    with pytest.raises(UserError, match=r"cannot write .*full\.png \(No space left on device\)"):
        with atomic_path(tmp_path / "full.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(FileNotFoundError):  # a failed read of an input is no failed write
        with atomic_path(tmp_path / "y.png"):
            (tmp_path / "missing-input.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]


def test_make_shards_clears_its_own_leftovers_only(photos, tmp_path):
    from cyclegan.data.shards import find_domains, write_shards

    mine, theirs = tmp_path / ".shards.k3j4.partial", tmp_path / ".other.x9y8.partial"
    for leftover in (mine, theirs):
        (leftover / "train").mkdir(parents=True)
    write_shards(find_domains(photos, None, None), tmp_path / "shards", workers=1)
    assert not mine.exists() and theirs.is_dir()


def test_checkpoint_leftovers_are_cleared(tmp_path):
    from cyclegan.checkpoint import clean_partial

    root = tmp_path / "run" / "checkpoints"
    leftovers = [root / ".step_00000010.partial", root / ".step_00000020.k3j4.old",
                 tmp_path / "run" / ".metrics.jsonl.k3j4.partial", tmp_path / "run" / ".export.x9y8.old"]
    for leftover in leftovers:
        leftover.mkdir(parents=True) if "step" in leftover.name or "export" in leftover.name else None
        leftover.parent.mkdir(parents=True, exist_ok=True)
        if not leftover.exists():
            leftover.write_text("half")
    (root / "step_00000030").mkdir()
    clean_partial(root)
    assert not any(p.exists() for p in leftovers) and (root / "step_00000030").is_dir()


def test_a_staged_folder_is_flushed_before_and_after_its_swap(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    staging = tmp_path / ".out.partial"
    (staging / "deep").mkdir(parents=True)
    (staging / "deep" / "a.bin").write_bytes(b"a")
    monkeypatch.setattr(os, "fsync", fsync)
    replace_folder(staging, tmp_path / "out")
    order = [p.name for p in synced]
    assert {"a.bin", "deep", ".out.partial"} <= set(order[:-1]) and synced[-1] == tmp_path


def test_the_umask_is_read_without_being_set(tmp_path, monkeypatch):
    mask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask called: that races with threads"))
        atomic_write(tmp_path / "x", "x")
    finally:
        monkeypatch.undo()
        os.umask(mask)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o640


def test_records_tell_a_cut_off_line_from_a_wrong_one(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2 is not a JSON object"):
        read_jsonl(log)


def test_a_model_card_takes_a_hand_written_run_record(tmp_path):
    from cyclegan.export import run_facts

    (tmp_path / "run.json").write_text('{"train": {"lr": 0.0002}}')
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text('{"results": {}}')
    facts = run_facts(tmp_path, tmp_path / "g_ab.safetensors", "AtoB")
    assert "lr 0.0002" in facts[0] and "global batch ?" in facts[0]



HOLD_SHARDS = """
import sys, time
from pathlib import Path
from cyclegan.io.outputs import replacement_lock
output = Path(sys.argv[1])
with replacement_lock(output):
    (output.parent / f".{output.name}.live.partial").mkdir()  # this run's staging folder
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_make_shards_is_told_who_holds_the_output(photos, tmp_path):
    from cyclegan.data.shards import find_domains, write_shards

    output, sources = tmp_path / "shards", find_domains(photos, None, None)
    staging = tmp_path / ".shards.live.partial"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SHARDS, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"shards is being written by another run \\(pid {holder.pid} on "):
            write_shards(sources, output, shard_size=2, workers=1)
        assert staging.is_dir() and not output.exists(), "the other run's staging folder was cleared"
    finally:
        holder.kill()
        holder.wait()
    write_shards(sources, output, shard_size=2, workers=1)  # the lock died with its holder
    assert (output / "manifest.json").is_file() and not staging.exists()  # a killed run's leftover: cleared
    assert not (tmp_path / ".shards.lock").exists()  # removed by the run that ended, while it still held it


def test_a_folder_removal_cut_short_leaves_no_half_folder_under_its_name(tmp_path, monkeypatch):
    import cyclegan.io.files as files

    (tmp_path / "step_2" / "deep").mkdir(parents=True)
    (tmp_path / "step_2" / "deep" / "g_ab.safetensors").write_bytes(b"w")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt  # the process dies while deleting

    monkeypatch.setattr(files.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        files.remove_folder(tmp_path / "step_2")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".step_2.")] == []
    files.remove_leftovers(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _onnx_with_metadata(path: Path, metadata: str) -> Path:
    """The smallest ONNX model (an identity) carrying `metadata` as its generator description."""
    import onnx
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, "h", "w"]) for name in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", tensor[:1],
                                              tensor[1:]), opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"cyclegan.generator": metadata})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("metadata, wrong", [('{"ngf": 8, "n_bl', "not valid JSON"), ("[8]", "not a JSON object"),
                                             ('{"depth": 3}', "is not a valid generator description")])
def test_an_onnx_model_with_damaged_metadata_is_one_line(tmp_path, metadata, wrong):
    from cyclegan.errors import CheckpointError
    from cyclegan.translate.onnx import OnnxGenerator

    with pytest.raises(CheckpointError, match=f"g.onnx \\(its cyclegan.generator metadata\\):? {wrong}"):
        OnnxGenerator(_onnx_with_metadata(tmp_path / "g.onnx", metadata))
    assert OnnxGenerator(_onnx_with_metadata(tmp_path / "g.onnx", '{"ngf": 8}')).spec.ngf == 8
