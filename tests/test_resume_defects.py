"""Resume defects of issue 23: a changed pool size, fewer GPUs, counters that restarted, a
`train.max_steps` beyond the schedule, and the stream's position. One tiny run (three steps, the
third skipped for a NaN gradient) is shared by most tests; each resumes a copy of it."""

import io
import json
import random
import shutil
import tarfile

import numpy as np
import pytest
import torch

from cyclegan.build import make_plan
from cyclegan.rng import restore_rng_state, rng_state
from cyclegan.config import load_config
from cyclegan.data.sources import find_sources
from cyclegan.errors import ConfigError
from tests.conftest import final_weights, script, tiny
from tests.test_faults import inject_nan, skipped_counts

# every run of this module, the base one included: the health warning about a generator that
# copies its input holds on every log (|G(x) - x| <= 2 on [-1, 1] images), so its streak grows each step
COMMON = ["tracking.mode=disabled", "train.keep_checkpoints=10", "tracking.warn_identity_change=10"]
IDENTITY_WARNING = "collapsed to the identity"


@pytest.fixture(scope="module")
def base_run(demo_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_defects") / "base"
    result = inject_nan("grad", "0", demo_shards, out, "train.max_steps=3", "tracking.warn_identity_change=10")
    assert result.returncode == 0, result.stderr[-2000:]
    assert skipped_counts(out) == [0, 0, 1]
    assert result.stdout.count(IDENTITY_WARNING) == 2, "both generators' streaks reached 3 logs at step 3"
    return out


def copy_of(base_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base_run, out)
    return out


def resume(demo_shards, out, *extra):
    return script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, out, *COMMON, "resume=auto", *extra),
                  check=False)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[-1]


# 2.8: the skipped-step count and the health streaks go on after a resume

def test_a_resumed_run_goes_on_counting_skipped_steps_and_health_streaks(base_run, demo_shards, tmp_path):
    out = copy_of(base_run, tmp_path)
    result = resume(demo_shards, out, "train.max_steps=6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert skipped_counts(out) == [0, 0, 1, 1, 1, 1], "the step skipped before the resume stays counted"
    # the streaks reached 3 (and warned) at step 3; counted from zero again they would warn again at step 6
    assert IDENTITY_WARNING not in result.stdout + result.stderr


# 2.4: another train.pool_size is refused in one line, before anything is written

def test_a_changed_pool_size_is_refused_before_any_work(base_run, demo_shards, tmp_path):
    out = copy_of(base_run, tmp_path)
    before = snapshot(out)
    line = refused(resume(demo_shards, out, "train.max_steps=6", "train.pool_size=10"))
    assert line.startswith("error: checkpoint ") and "train.pool_size=50" in line and "train.pool_size=10" in line
    assert snapshot(out) == before


# 2.11: each rank's stream position goes into its checkpoint and comes back

def with_corrupt_samples(demo_shards, folder):
    """A copy of the demo shards in which every third training sample of domain A is garbage; the
    counts stay, so the loader only finds out when it decodes one."""
    shutil.copytree(demo_shards, folder)
    for shard in sorted((folder / "train").glob("A-*.tar")):
        with tarfile.open(shard) as tar:
            members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
        with tarfile.open(shard, "w") as tar:
            for i, (member, data) in enumerate(members):
                data = b"not a png" if i % 3 == 1 else data
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return folder


def test_a_resume_seeks_past_the_corrupt_samples_its_lanes_had_read(demo_shards, tmp_path):
    # Two loader workers read past corrupt samples before the checkpoint at step 3. Resumed there,
    # each lane must seek past what it had read (the position in rank_0.pt), not past the samples
    # it had trained on: the 3 + 3 steps then give the 6 uninterrupted ones, bit for bit.
    shards = with_corrupt_samples(demo_shards, tmp_path / "shards")
    common = [*COMMON, "data.num_workers=2", "train.checkpoint_every=3", "train.max_steps=6"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    script("train.py", "--config", "configs/demo.yaml", *tiny(shards, whole, *common))
    shutil.copytree(whole, split)
    shutil.rmtree(split / "checkpoints" / "step_0000006")  # as if stopped after the checkpoint at step 3
    position = torch.load(split / "checkpoints" / "step_0000003" / "rank_0.pt", weights_only=True)["stream"]
    trained_on = {0: 4, 1: 2}  # batches of 2: lane 0 gave batches 0 and 2, lane 1 batch 1
    assert position["layout"] == [1, 2]
    assert any(position["read"][lane]["A"] > n for lane, n in trained_on.items()), "corrupt samples were read"
    result = script("train.py", "--config", "configs/demo.yaml", *tiny(shards, split, *common, "resume=auto"))
    assert "at step 3" in result.stdout
    resumed, reference = final_weights(split), final_weights(whole)
    for name, tensors in reference.items():
        for key, tensor in tensors.items():
            assert torch.equal(resumed[name][key], tensor), f"{name}.{key}"


# 2.14: train.max_steps beyond the schedule is an error before any work, fresh or resumed

def test_max_steps_beyond_the_schedule_is_refused_when_the_run_is_sized(demo_shards):
    def plan(max_steps):  # a one-epoch schedule of 80 steps: 160 images, batch 2
        cfg = load_config(None, [f"data.root={demo_shards}", "train.batch_size=2", "train.epochs=0",
                                 "train.decay_epochs=1", f"train.max_steps={max_steps}"])
        return make_plan(cfg, find_sources(cfg.data), world_size=1)

    assert plan(80).max_steps == 80
    with pytest.raises(ConfigError, match=r"'train.max_steps' \(81\) lies beyond the schedule, which ends at step 80 "
                                          r"\(0 \+ 1 epochs of 80 steps\): lower it, or lengthen .* train.epochs"):
        plan(81)


def test_a_resumed_run_with_max_steps_beyond_the_schedule_stops_before_a_tracker_run(base_run, demo_shards, tmp_path):
    out = copy_of(base_run, tmp_path)
    before = snapshot(out)
    # with W&B offline, a run that got as far as its tracker would leave a wandb/ folder behind
    line = refused(resume(demo_shards, out, "train.epochs=0", "train.decay_epochs=1", "train.max_steps=81",
                          "tracking.mode=offline", "tracking.backend=wandb"))
    assert line.startswith("error: config key 'train.max_steps' (81)") and "ends at step 80" in line
    assert snapshot(out) == before


def test_resuming_a_complete_run_does_nothing_and_says_so(base_run, demo_shards, tmp_path):
    out = copy_of(base_run, tmp_path)
    before = snapshot(out)
    # with W&B offline, a run that got as far as its tracker would leave a second, empty run behind
    result = resume(demo_shards, out, "train.max_steps=3", "tracking.mode=offline", "tracking.backend=wandb")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done at step 3: the run was complete already" in result.stdout
    assert snapshot(out) == before and not (out / "wandb").exists()


# 2.5: each process saves and restores its own GPU's RNG state only

class FakeGPUs:
    """torch.cuda's RNG functions over `count` fake devices, each with its own state; asking for a
    device that is not there raises IndexError, as torch does."""

    def __init__(self, monkeypatch, count):
        self.count, self.states = count, {i: torch.full((8,), i, dtype=torch.uint8) for i in range(count)}
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "device_count", lambda: self.count)
            monkeypatch.setattr(module, "get_rng_state", self.get)
            monkeypatch.setattr(module, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def index(self, device):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= self.count:
            raise IndexError("tuple index out of range")
        return index

    def get(self, device="cuda"):
        return self.states[self.index(device)].clone()

    def set(self, state, device="cuda"):
        self.states[self.index(device)] = state.clone()


def saved_and_loaded(state, tmp_path):
    """Through a file, as checkpoints keep it."""
    torch.save(state, tmp_path / "rank.pt")
    return torch.load(tmp_path / "rank.pt", weights_only=True)


def test_rank_1_of_an_8_gpu_node_resumes_on_a_4_gpu_node(monkeypatch, tmp_path):
    gpus = FakeGPUs(monkeypatch, 8)
    device = torch.device("cuda", 1)
    gpus.states[1] = torch.full((8,), 42, dtype=torch.uint8)
    state = saved_and_loaded(rng_state(device), tmp_path)
    assert torch.equal(state["cuda"], gpus.states[1]), "the process's own device, and only it"
    gpus.count, gpus.states = 4, {i: torch.zeros(8, dtype=torch.uint8) for i in range(4)}  # the requeue
    restore_rng_state(state, device)
    assert torch.equal(gpus.states[1], torch.full((8,), 42, dtype=torch.uint8))
    assert all(not gpus.states[i].any() for i in (0, 2, 3)), "other processes' devices are theirs"


@pytest.mark.parametrize("saved_devices, restored, expected", [(8, 1, 1), (2, 3, None), (1, None, 0)],
                         ids=["longer", "shorter", "single-gpu"])
def test_older_checkpoints_holding_every_visible_gpu_restore_this_device(monkeypatch, caplog, saved_devices,
                                                                         restored, expected):
    gpus = FakeGPUs(monkeypatch, 4)
    saved = [torch.full((8,), 100 + i, dtype=torch.uint8) for i in range(saved_devices)]
    state = {**rng_state(torch.device("cpu")), "cuda": saved}
    untouched = {i: s.clone() for i, s in gpus.states.items()}
    restore_rng_state(state, torch.device("cuda", restored) if restored is not None else torch.device("cuda"))
    for i in range(4):
        assert torch.equal(gpus.states[i], saved[i] if i == expected else untouched[i]), i
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if expected is None:  # a device the checkpoint has no state for is said, not passed over
        assert len(warned) == 1 and "none for cuda:3" in warned[0] and "not bitwise" in warned[0]
    else:
        assert not warned


def test_the_cpu_rng_states_round_trip_exactly(tmp_path):
    def draws():
        return torch.rand(4).tolist(), random.random(), np.random.rand(3).tolist(), np.random.randn()

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    state = saved_and_loaded(rng_state(torch.device("cpu")), tmp_path)
    assert "cuda" not in state
    first = draws()
    restore_rng_state(state, torch.device("cpu"))
    assert json.dumps(draws()) == json.dumps(first)


def test_a_checkpoint_from_before_the_objectives_resumes(trained_run, demo_shards, tmp_path):
    # checkpoints written before model.objective existed lack its keys in their architecture record:
    # they mean a CycleGAN run of the plain layout. How weights started (model.init) may change: they are loaded
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    for state in (out / "checkpoints").glob("step_*/state.json"):
        record = json.loads(state.read_text())
        for key in ("objective", "antialias", "init", "nce_layers", "head_nc"):
            del record["model"][key]
        state.write_text(json.dumps(record))
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, out, "train.max_steps=4", "tracking.mode=disabled", "resume=auto",
                          "model.init=xavier"))
    assert "resumed from" in result.stdout and "done at step 4" in result.stdout
    refused = script("train.py", "--config", "configs/demo.yaml",
                     *tiny(demo_shards, out, "train.max_steps=5", "tracking.mode=disabled", "resume=auto",
                           "model.antialias=true"), check=False)
    assert refused.returncode != 0 and "model.antialias is False there, True here" in refused.stderr
