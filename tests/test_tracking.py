"""What a run tells W&B (read back from the offline run file itself) and TensorBoard."""

import json

import numpy as np
import pytest
from PIL import Image

from cyclegan.checkpoint import complete_checkpoints
from cyclegan.objectives.cyclegan import StepLosses
from tests.conftest import ROOT, launch, script, tiny
from tests.wandb_records import read_run

SCALARS = [f"loss/{n}" for n in StepLosses.names()] + [
    "lr/g", "lr/d", "grad_norm/g", "grad_norm/d", "perf/images_per_s", "perf/seconds_per_step",
    "perf/data_wait_fraction", "data/skipped_samples",
]


def run_files(output):
    return sorted(output.glob("wandb/offline-run-*/run-*.wandb"))


def train(output, shards, *extra):
    return script("train.py", "--config", "configs/demo.yaml",
                  *tiny(shards, output, "tracking.log_every=2", "tracking.image_every=2", "tracking.num_images=2", *extra))


def test_offline_run_holds_scalars_config_images_and_summary(demo_shards, tmp_path):
    out = tmp_path / "run"
    train(out, demo_shards, "train.max_steps=4", "tracking.tags=[demo,test]")
    [path] = run_files(out)
    run = read_run(path)
    rows = [row for row in run["history"] if "loss/adv_ab" in row]
    assert [row["_step"] for row in rows] == [2, 4]
    for row in rows:
        assert set(SCALARS) <= set(row), set(SCALARS) - set(row)
        assert row["samples/AtoB/caption"].startswith("real A | G_AB(A)")
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss/cycle_a"] for r in jsonl] == [r["loss/cycle_a"] for r in rows]
    config = run["config"]
    assert config["train"]["lr"] == 5e-4 and config["model"]["ngf"] == 8 and config["world_size"] == 1
    assert config["global_batch"] == 2 and config["versions"]["torch"] and len(config["git_commit"]) >= 7
    assert run["summary"]["final_step"] == 4 and "loss/d_a" in run["summary"]
    state = json.loads((complete_checkpoints(out / "checkpoints")[-1] / "state.json").read_text())
    assert state["tracker_run_id"] == run["run_id"]
    images = sorted(path.parent.glob("files/media/images/samples/*.png"))
    assert len(images) == 4
    for image in images:
        pixels = np.asarray(Image.open(image))
        assert pixels.shape == (2 * 32, 4 * 32, 3) and pixels.std() > 5
    assert len(list((out / "samples").glob("*.png"))) == 4


def test_resumed_run_continues_the_same_run_and_step_count(demo_shards, tmp_path):
    out = tmp_path / "run"
    train(out, demo_shards, "train.max_steps=2", "tracking.log_every=1")
    result = train(out, demo_shards, "train.max_steps=4", "tracking.log_every=1", "resume=auto")
    first, second = (read_run(p) for p in run_files(out))
    assert first["run_id"] == second["run_id"]
    steps = [[row["_step"] for row in run["history"] if "loss/adv_ab" in row] for run in (first, second)]
    assert steps == [[1, 2], [3, 4]]
    assert "steps must" not in result.stderr.lower()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_only_the_main_process_talks_to_wandb(demo_shards, tmp_path):
    out = tmp_path / "run"
    launch(2, str(ROOT / "scripts/train.py"), "--config", str(ROOT / "configs/demo.yaml"),
           *tiny(demo_shards, out, "train.max_steps=2", "tracking.log_every=2"))
    [path] = run_files(out)
    run = read_run(path)
    assert run["config"]["world_size"] == 2 and run["config"]["global_batch"] == 4
    assert [row["_step"] for row in run["history"] if "loss/d_b" in row] == [2]


def test_tensorboard_backend(demo_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(out, demo_shards, "train.max_steps=2", "tracking.backend=tensorboard", "tracking.project=tb")
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert set(SCALARS) <= set(events.Tags()["scalars"])
    assert {"samples/AtoB", "samples/BtoA"} <= set(events.Tags()["images"])
    assert [s.step for s in events.Scalars("loss/cycle_a")] == [2]
    assert not (out / "wandb").exists()


def test_disabled_tracking_still_writes_metrics(demo_shards, tmp_path):
    out = tmp_path / "run"
    train(out, demo_shards, "train.max_steps=2", "tracking.mode=disabled")
    assert not (out / "wandb").exists() and (out / "metrics.jsonl").read_text().count("\n") == 1
