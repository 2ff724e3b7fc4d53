"""The shared I/O: safe writes, records, output safety and locks, and the defects they remove."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan.errors import DataError, UserError
from cyclegan.io.files import atomic_folder, atomic_path, atomic_write, replace_folder, writing
from cyclegan.io.outputs import LOCK, lock_holder, output_lock, prepare_output
from cyclegan.io.records import append_jsonl, read_json, read_jsonl, write_json
from tests.conftest import read_only_folder, writable_again


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- safe writes ---------------------------------------------------------------------------

def test_atomic_write_replaces_whole_and_follows_the_umask(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    old = os.umask(0o027)
    try:
        atomic_write(target, b"one")
        atomic_write(target, "two")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"two"
    assert mode(target) == 0o640  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_safetensors_through_atomic_path_follow_the_umask(tmp_path):
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as temporary:
            save_file({"w": torch.zeros(2)}, str(temporary))
    finally:
        os.umask(old)
    assert mode(tmp_path / "w.safetensors") == 0o644


def test_two_writers_of_one_target_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "x.png"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer block ends last


def test_replace_folder_swaps_whole(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file(), "the old folder stays until the new one is complete"
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    staging = tmp_path / "staging"
    staging.mkdir()
    replace_folder(staging, target)
    assert not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_writing_turns_an_os_error_into_one_line(tmp_path):
    with pytest.raises(UserError, match=r"cannot write .*x\.txt .*then retry"):
        with writing(tmp_path / "x.txt", "then retry"):
            raise OSError(28, "No space left on device")


# --- records -------------------------------------------------------------------------------

def test_read_json_names_the_file_and_what_is_wrong(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"splits": {')
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
        read_json(path)
    write_json(path, {"shards": []})
    with pytest.raises(DataError, match=r"manifest\.json: has no 'samples' key"):
        read_json(path, required=("shards", "samples"))
    path.write_text("[1]")
    with pytest.raises(DataError, match="not a JSON object"):
        read_json(path)
    with pytest.raises(DataError, match="cannot be read"):
        read_json(tmp_path / "missing.json")


def test_read_jsonl_drops_a_cut_off_last_line_with_a_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with path.open("a") as out:
        out.write('{"step": 3, "loss/g')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "dropped its last line (3)" in capsys.readouterr().err


def test_read_jsonl_refuses_a_damaged_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 2"):
        read_jsonl(path)


# --- output safety and locks ---------------------------------------------------------------

@pytest.mark.parametrize("output, relation", [(".", "holds .*which this command reads"),
                                              ("run", "is an input of this command: choose another --output"),
                                              ("run/inner", "lies inside .*which this command reads")])
def test_prepare_output_refuses_what_the_command_reads(tmp_path, output, relation):
    run = tmp_path / "run"
    (run / "inner").mkdir(parents=True)
    (run / "weights").write_text("w")
    with pytest.raises(UserError, match=relation):
        prepare_output(tmp_path / output, [run], overwrite=True)
    assert (run / "weights").read_text() == "w"


def test_prepare_output_replaces_only_with_overwrite(tmp_path):
    output = tmp_path / "out"
    prepare_output(output, [], overwrite=False)  # nothing there yet
    output.mkdir()
    (output / "x").write_text("x")
    with pytest.raises(UserError, match="pass --overwrite"):
        prepare_output(output, [], overwrite=False)
    prepare_output(output, [], overwrite=False, resume=True)
    prepare_output(output, [], overwrite=True, staged=True)
    assert (output / "x").exists()
    prepare_output(output, [], overwrite=True)
    assert not output.exists()


HOLD = """
import sys, time
from cyclegan.io.outputs import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_told_who_holds_the_output(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"another run \\(pid {holder.pid} on "):
            with output_lock(tmp_path / "out"):
                pass
        assert lock_holder(tmp_path / "out").startswith(f"pid {holder.pid}")
        (tmp_path / "out" / "x").write_text("x")
        with pytest.raises(UserError, match="being written by another run"):
            prepare_output(tmp_path / "out", [], overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path / "out") is None  # the lock died with its process
    with output_lock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK).is_file()


def test_a_read_only_output_is_one_line(tmp_path):
    folder = read_only_folder(tmp_path / "ro")
    try:
        with pytest.raises(UserError, match=r"cannot write .*ro \(Permission denied\)"):
            with output_lock(folder):
                pass
    finally:
        writable_again(tmp_path)


def test_a_read_only_file_system_is_one_line_saying_so(tmp_path, monkeypatch):
    """Not "Permission denied": the file system is mounted read-only (faked for this folder only)."""
    folder, real_access, real_statvfs = tmp_path / "mnt", os.access, os.statvfs
    folder.mkdir()

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and real_access(path, mode, **kw))
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly() if Path(path) == folder else real_statvfs(path))
    with pytest.raises(UserError, match=r"cannot write .*mnt \(Read-only file system\)"):
        with output_lock(folder):
            pass


# --- the defects the shared I/O removes ----------------------------------------------------

def test_weights_and_exports_follow_the_umask(generator, tmp_path):
    from cyclegan.export import export_hf
    from cyclegan.models import load_generator

    old = os.umask(0o022)
    try:
        from cyclegan.models.loading import export_generator

        export_generator(load_generator(generator), tmp_path / "g.safetensors")
        export_hf(load_generator(generator), tmp_path / "hf", "AtoB", generator, None)
    finally:
        os.umask(old)
    assert mode(tmp_path / "g.safetensors") == 0o644 and mode(tmp_path / "g.json") == 0o644
    assert mode(tmp_path / "hf" / "model.safetensors") == 0o644


def test_a_cut_off_metrics_line_does_not_block_resume(tmp_path, capsys):
    from types import SimpleNamespace

    from cyclegan.tracking import RunLog

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(f'{{"step": {s}, "loss/g": 1.0}}\n' for s in (1, 2, 3)) + '{"step": 4, "lo')
    RunLog._drop_rows_after(SimpleNamespace(metrics=metrics), 2)
    assert read_jsonl(metrics) == [{"step": 1, "loss/g": 1.0}, {"step": 2, "loss/g": 1.0}]
    assert "cut off" in capsys.readouterr().err


def test_damaged_records_are_one_line(tmp_path, photos):
    from cyclegan.config import DataConfig
    from cyclegan.data.shards import find_domains, write_shards
    from cyclegan.data.sources import find_sources
    from cyclegan.translate.shards import input_shards

    with pytest.raises(DataError, match="--workers 0: must be at least 1"):
        write_shards(find_domains(photos, None, None), tmp_path / "shards", workers=0)
    write_shards(find_domains(photos, None, None), tmp_path / "shards", workers=1)
    manifest = tmp_path / "shards" / "manifest.json"
    written = read_json(manifest)
    del written["splits"]["train"]["B"]["samples"]
    write_json(manifest, written)
    with pytest.raises(DataError, match=r"manifest\.json \(splits\.train\.B\): has no 'samples' key"):
        find_sources(DataConfig(root=str(tmp_path / "shards")))
    manifest.write_text('{"splits": {"train": {')
    for read in (lambda: find_sources(DataConfig(root=str(tmp_path / "shards"))),
                 lambda: input_shards(str(tmp_path / "shards"), "A")):
        with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
            read()


def translate(generator: Path, source: Path | str, output: Path, **options):
    from cyclegan.translate.run import run

    return run(generator, str(source), output, device="cpu", **options)


def test_translation_records_what_was_asked_after_checking_the_input(generator, photos, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(DataError, match="does not exist"):
        translate(generator, tmp_path / "phtoos", output)
    assert not (output / ".translation.json").exists(), "a typo leaves no record behind"
    translate(generator, f"{photos / 'trainA'}/", output, precision="auto")
    settings = read_json(output / ".translation.json")
    assert settings["input"] == str((photos / "trainA").resolve()) and settings["precision"] == "auto"
    translate(generator, photos / "trainA", output, precision="auto")  # the same input, written otherwise
    (output / ".translation.json").write_text('{"input": ')
    with pytest.raises(DataError, match=r"\.translation\.json: not valid JSON"):
        translate(generator, photos / "trainA", output, precision="auto")


def test_translated_shards_are_described_as_make_shards_does(generator, photos, tmp_path):
    from cyclegan.data.shards import find_domains, write_shards

    write_shards(find_domains(photos, None, None), tmp_path / "shards", workers=1)
    translate(generator, tmp_path / "shards", tmp_path / "out")
    entry = read_json(tmp_path / "out" / "manifest.json")["splits"]["train"]
    assert list(entry) == ["B"], "A -> B: the outputs are of domain B"
    fields = entry["B"]
    assert fields["samples"] == 3 and fields["dtypes"] == {"uint8": 3} and fields["array_bands"] == {}
    assert fields["colour_samples"] == 3 and fields["colour_example"] and fields["bytes"] > 0
    assert 0 <= fields["value_range"][0] <= fields["value_range"][1] <= 255


def test_a_second_translation_into_one_output_is_told_who_holds_it(generator, photos, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"being written by another run \\(pid {holder.pid} on "):
            translate(generator, photos / "trainA", tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_translation_removes_what_a_killed_run_left_half_written(generator, photos, tmp_path):
    output = tmp_path / "out"
    leftovers = [output / ".0.png.k3j4.partial", output / "deep" / ".1.png.x9y8.partial"]
    for leftover in leftovers:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a png")
    (output / "keep.partial").write_text("a user's file, not hidden: not ours to remove")
    translate(generator, photos / "trainA", output)
    assert not any(leftover.exists() for leftover in leftovers)
    assert (output / "keep.partial").is_file() and (output / "0.png").is_file()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_removes_what_the_command_reads(generator, photos, tmp_path):
    from tests.conftest import script

    run = tmp_path / "runs" / "h2z"
    (run / "export").mkdir(parents=True)
    for path in generator.parent.iterdir():
        (run / "export" / path.name).write_bytes(path.read_bytes())
    (run / "config.yaml").write_text("output_dir: runs/h2z\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = snapshot(tmp_path)
    result = script("export.py", "--checkpoint", run, "--format", "hf", "--output", run, "--overwrite", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{run} is an input of this command" in result.stderr
    result = script("make_shards.py", "--input", photos, "--output", tmp_path, "--overwrite", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and f"holds {photos}" in result.stderr
    assert snapshot(tmp_path) == before
