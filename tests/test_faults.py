"""Faults with real processes: kill -9, SIGTERM and SIGINT, a full disk, diverging ranks."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cyclegan.checkpoint import complete_checkpoints
from tests.conftest import ROOT, checkpoint_weights, final_weights, launch, max_difference, script, tiny

TRAIN = [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(ROOT / "configs/demo.yaml")]


def weights_at(output, step):
    return checkpoint_weights(output / "checkpoints" / f"step_{step:07d}")


def start(args, env=None):
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})


def logged_steps(output):
    path = output / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.heavy  # about 23 s; SIGTERM, SIGUSR1 (test_slurm) and the atomic-write checks stay in make test
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(noise_shards, tmp_path):
    common = ["train.max_steps=16", "train.checkpoint_every=1", "tracking.mode=disabled", "data.num_workers=1"]
    script("train.py", "--config", "configs/demo.yaml", *tiny(noise_shards, tmp_path / "whole", *common))
    out = tmp_path / "killed"
    rng = random.Random(0)
    for attempt in range(4):
        process = start(TRAIN + tiny(noise_shards, out, *common, "resume=auto"))
        if attempt == 0:  # once right inside a checkpoint save
            wait_for(lambda: list((out / "checkpoints").glob(".step_*.partial")) if out.exists() else False)
        else:
            before = logged_steps(out)
            wait_for(lambda: logged_steps(out) > before + rng.randint(0, 2))
            time.sleep(rng.uniform(0, 0.1))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result = script("train.py", "--config", "configs/demo.yaml", *tiny(noise_shards, out, *common, "resume=auto"))
    assert "done at step 16" in result.stdout
    whole, killed = final_weights(tmp_path / "whole"), final_weights(out)
    assert list(whole) == ["d_a", "d_b", "g_ab", "g_ba"]
    for name in whole:
        for key in whole[name]:
            assert torch.equal(whole[name][key], killed[name][key]), f"{name}.{key}"
    assert not list((out / "checkpoints").glob(".*partial"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_one_rank_checkpoints_and_exits_cleanly(demo_shards, tmp_path, signum):
    out = tmp_path / "run"
    process = start(TRAIN + tiny(demo_shards, out, "train.max_steps=500", "tracking.mode=disabled",
                                 "data.num_workers=1"))
    wait_for(lambda: logged_steps(out) >= 3)
    os.killpg(process.pid, signum)  # the whole process group, loader workers too, as a scheduler does
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    stopped = int(stdout.split("stopped at step ")[1].split()[0])
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == [f"step_{stopped:07d}"]
    assert signal.Signals(signum).name in stdout


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.heavy)])
def test_signal_to_two_ranks_stops_both_at_the_same_step(demo_shards, tmp_path, signum):
    out = tmp_path / "run"
    accelerate = str(ROOT / ".venv/bin/accelerate") if (ROOT / ".venv/bin/accelerate").exists() else "accelerate"
    from tests.conftest import free_port

    process = start([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                     "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
                     *TRAIN[1:], *tiny(demo_shards, out, "train.max_steps=400", "tracking.mode=disabled")],
                    env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    wait_for(lambda: logged_steps(out) >= 3)
    os.killpg(process.pid, signum)  # the launcher and both ranks, as a scheduler or Ctrl-C does
    stdout, stderr = process.communicate(timeout=120)
    assert "stopped at step" in stdout, stderr[-3000:]
    stopped = int(stdout.split("stopped at step ")[1].split()[0])
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == [f"step_{stopped:07d}"]
    sums = json.loads((out / "checksums.json").read_text())
    assert sums["step"] == stopped and sums["ranks"][0] == sums["ranks"][1]
    assert sorted(p.name for p in complete_checkpoints(out / "checkpoints")[0].glob("rank_*.pt")) == \
        ["rank_0.pt", "rank_1.pt"]


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(demo_shards, tiny_disk):
    out = tiny_disk / "run"
    common = ["tracking.mode=disabled", "train.checkpoint_every=2"]
    script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, out, "train.max_steps=2", *common))
    with open(tiny_disk / "filler", "wb", buffering=0) as filler:  # leave a few KiB: enough for metrics, not a checkpoint
        try:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        except OSError:
            pass
    os.truncate(tiny_disk / "filler", os.path.getsize(tiny_disk / "filler") - 16 * 1024)
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, out, "train.max_steps=4", "resume=auto", *common), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "could not write checkpoint" in result.stderr or "cannot write" in result.stderr
    assert "step_0000002" in result.stderr or "resume=auto" in result.stderr
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_0000002"]
    assert not list((out / "checkpoints").glob(".*partial"))
    load_file(str(out / "checkpoints" / "step_0000002" / "g_ab.safetensors"))


@pytest.mark.slow
def test_the_rank_check_catches_diverging_replicas(demo_shards, tmp_path):
    result = launch(2, str(ROOT / "tests/harness/diverge.py"), "--config", str(ROOT / "configs/demo.yaml"),
                    *tiny(demo_shards, tmp_path / "run", "train.max_steps=4", "train.check_ranks_every=2",
                          "tracking.mode=disabled"), check=False)
    assert result.returncode != 0
    assert "ranks hold different weights for g_ab at step 2" in result.stdout + result.stderr


def test_same_seed_same_losses(demo_shards, tmp_path):
    for name in ("first", "second"):
        script("train.py", "--config", "configs/demo.yaml",
               *tiny(demo_shards, tmp_path / name, "train.max_steps=3", "tracking.mode=disabled"))
    rows = [[{k: v for k, v in json.loads(line).items() if k.startswith("loss/")}
             for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("first", "second")]
    assert rows[0] == rows[1] and len(rows[0]) == 3


def inject_nan(where, ranks, shards, output, *extra, nproc=1):
    """Train with a NaN in the third batch or in one of its generator gradients, on `ranks`."""
    harness = str(ROOT / "tests/harness/inject_nan.py")
    args = [where, ranks, "--config", str(ROOT / "configs/demo.yaml"),
            *tiny(shards, output, "tracking.mode=disabled", "train.keep_checkpoints=10", *extra)]
    if nproc == 1:
        return subprocess.run([sys.executable, harness, *args], cwd=ROOT, capture_output=True, text=True)
    return launch(nproc, harness, *args, check=False)


def skipped_counts(output):
    return [json.loads(line)["train/skipped_nonfinite_steps"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def all_finite(nets):
    return all(torch.isfinite(t).all() for net in nets.values() for t in net.values())


@pytest.mark.parametrize("adam", ["fused", "foreach"])
def test_a_nan_loss_skips_the_step_and_is_counted(demo_shards, tmp_path, adam):
    out = tmp_path / "run"
    result = inject_nan("batch", "0", demo_shards, out, "train.max_steps=5", "train.checkpoint_every=1",
                        "train.stop_after_nonfinite=0", f"perf.adam={adam}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert skipped_counts(out) == [0, 0, 1, 1, 1]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["loss/cycle_a"] != rows[2]["loss/cycle_a"]  # the NaN is logged honestly ...
    step2, step3 = (weights_at(out, step) for step in (2, 3))
    assert max_difference(step3, step2) == 0, "... and not trained on: step 3 left every weight as it was"
    assert all_finite(final_weights(out))


@pytest.mark.slow
@pytest.mark.parametrize("where, ranks, objective", [pytest.param("batch", "1", "cyclegan", marks=pytest.mark.heavy),
                                                     ("batch", "0,1", "cyclegan"),
                                                     ("grad", "1", "cyclegan"), ("batch", "1", "cut")])
def test_a_nan_on_some_ranks_is_skipped_on_every_rank(demo_shards, tmp_path, where, ranks, objective):
    # DDP averages gradients: a NaN on rank 1 reaches rank 0's gradients too (and a NaN gradient
    # under a finite loss is just as bad); every rank must skip the same step, counted once
    out = tmp_path / "run"
    result = inject_nan(where, ranks, demo_shards, out, "train.max_steps=5", "train.stop_after_nonfinite=0",
                        f"model.objective={objective}", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert skipped_counts(out) == [0, 0, 1, 1, 1]
    sums = json.loads((out / "checksums.json").read_text())
    assert sums["step"] == 5 and sums["ranks"][0] == sums["ranks"][1]
    assert all_finite(final_weights(out))


def test_nan_steps_in_a_row_stop_with_a_message_naming_a_good_checkpoint(demo_shards, tmp_path):
    out = tmp_path / "run"
    result = inject_nan("batch", "0", demo_shards, out, "train.max_steps=5", "train.checkpoint_every=1",
                        "train.stop_after_nonfinite=1")
    assert result.returncode == 2 and "stopped at step 3: 1 optimizer step(s) in a row" in result.stderr
    assert f"the newest checkpoint is {out / 'checkpoints' / 'step_0000002'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_0000001", "step_0000002"]
    assert all_finite(final_weights(out))


def test_non_finite_weights_are_never_checkpointed(demo_shards, tmp_path):
    # batch norm's running statistics take in a NaN batch even though the step is skipped
    out = tmp_path / "run"
    result = inject_nan("batch", "0", demo_shards, out, "model.norm=batch", "train.max_steps=5",
                        "train.checkpoint_every=1", "train.stop_after_nonfinite=0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"not writing checkpoint {out / 'checkpoints' / 'step_0000003'}: g_ab" in result.stderr
    assert "hold non-finite (NaN or inf) values at step 3" in result.stderr
    assert f"the newest complete checkpoint, {out / 'checkpoints' / 'step_0000002'}, is intact" in result.stderr
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_0000001", "step_0000002"]
    assert all_finite(final_weights(out))


def test_read_only_output_is_a_clear_error(demo_shards, tiny_disk):
    out = tiny_disk / "run"
    common = ["tracking.mode=disabled", "train.checkpoint_every=2"]
    script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, out, "train.max_steps=2", *common))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, out, "train.max_steps=4", "resume=auto", *common), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Read-only file system" in result.stderr and "resume=auto" in result.stderr
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_0000002"]
