"""Beyond the paper: averaged generators, warm starts, longer schedules, elastic resume,
differentiable augmentation and health signals."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cyclegan.build import build_training
from cyclegan.checkpoint import complete_checkpoints
from cyclegan.config import load_config
from cyclegan.diffaug import DiffAugment
from cyclegan.ema import GeneratorEMA
from cyclegan.metrics import HEALTH_LOGS, HealthMonitor
from cyclegan.models import NLayerDiscriminator, ResnetGenerator
from cyclegan.models.generator import GeneratorSpec
from cyclegan.objectives import objective_for
from cyclegan.objectives.cyclegan import train_step
from tests.conftest import ROOT, final_weights, launch, max_difference, script, tiny
from tests.test_schedule import closed_form
from tests.test_step import fresh_accelerator

TRAIN = str(ROOT / "scripts/train.py")


def rows(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_the_average_follows_its_closed_form():
    cfg = load_config(None, ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.n_layers_d=1"])
    torch.manual_seed(0)
    accelerator = fresh_accelerator()
    nets, opts, pools = build_training(accelerator, cfg)
    generators = {"g_ab": nets.g_ab, "g_ba": nets.g_ba}
    ema = GeneratorEMA(generators, 0.9, accelerator.device)
    history = [torch.cat([p.detach().double().flatten() for p in nets.g_ab.parameters()])]
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 6):
        batch = {k: torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1 for k in "AB"}
        train_step(accelerator, nets, opts, pools, batch, cfg)
        ema.update(generators, step)
        history.append(torch.cat([p.detach().double().flatten() for p in nets.g_ab.parameters()]))
    # ema_k = sum_i c_i w_i with c_i = (1 - d_i) prod_{j > i} d_j, c_0 = prod_j d_j, d_j = min(0.9, (1 + j) / (10 + j))
    decays = [min(0.9, (1 + j) / (10 + j)) for j in range(1, 6)]
    weights = [math.prod(decays)] + [(1 - decays[i - 1]) * math.prod(decays[i:]) for i in range(1, 6)]
    expected = sum(c * w for c, w in zip(weights, history))
    averaged = torch.cat([p.double().flatten() for p in ema.models["g_ab"].parameters()])
    torch.testing.assert_close(averaged, expected, rtol=0, atol=1e-7)
    assert abs(sum(weights) - 1) < 1e-12 and (averaged - history[-1]).abs().max() > 1e-4
    assert all(p.dtype == torch.float32 for p in ema.models["g_ab"].parameters())


def test_the_trainer_averages_once_per_optimizer_step(demo_shards, tmp_path):
    # grad_accum=2: two micro-batches per step, one update of the average
    out = tmp_path / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.max_steps=3", "train.ema_decay=0.5", "train.grad_accum=2",
                 "train.batch_size=1", "train.checkpoint_every=1", "train.keep_checkpoints=5", "tracking.mode=disabled"))
    saved = {c.name: c for c in complete_checkpoints(out / "checkpoints")}
    for step in (2, 3):
        decay = min(0.5, (1 + step) / (10 + step))
        before = load_file(str(saved[f"step_{step - 1:07d}"] / "g_ab_ema.safetensors"))
        trained, averaged = (load_file(str(saved[f"step_{step:07d}"] / f"{n}.safetensors")) for n in ("g_ab", "g_ab_ema"))
        for key in averaged:
            torch.testing.assert_close(averaged[key], decay * before[key] + (1 - decay) * trained[key],
                                       rtol=0, atol=1e-6, msg=key)


def test_the_average_is_exported_and_shown_unless_asked_otherwise(demo_shards, ema_run, tmp_path):
    (tmp_path / "ema").symlink_to(ema_run)  # read only; the others are trained as it was
    for name, extra in (("raw", ["train.export_ema=false"]), ("paper", ["train.ema_decay=0"])):
        script("train.py", "--config", "configs/demo.yaml",
               *tiny(demo_shards, tmp_path / name, "train.max_steps=3", "train.ema_decay=0.5", "tracking.image_every=3",
                     "tracking.mode=disabled", *extra))
    # averaging only watches: the trained weights are the paper's, bit for bit (docs/quality.md relies on it)
    assert max_difference(final_weights(tmp_path / "ema"), final_weights(tmp_path / "paper")) == 0
    last = complete_checkpoints(tmp_path / "ema" / "checkpoints")[-1]
    for name, source in (("ema", "g_ab_ema"), ("raw", "g_ab")):
        exported = load_file(str(tmp_path / name / "export" / "g_ab.safetensors"))
        kept = load_file(str(complete_checkpoints(tmp_path / name / "checkpoints")[-1] / f"{source}.safetensors"))
        assert all(torch.equal(exported[k], kept[k]) for k in kept), name
        assert json.loads((tmp_path / name / "export" / "state.json").read_text())["averaged"] == (name == "ema")
    trained, averaged = (load_file(str(last / f"{n}.safetensors")) for n in ("g_ab", "g_ab_ema"))
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)


def test_diffaug_is_differentiable_seeded_resumable_and_nothing_at_p0():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    assert DiffAugment("color,translation,cutout", 0.0, seed=1)(images) is images
    first = DiffAugment("color,translation,cutout", 1.0, seed=1)
    state = first.state_dict()
    out = first(images)
    assert out.shape == images.shape and not torch.equal(out, images)
    second = DiffAugment("color,translation,cutout", 1.0, seed=99)
    second.load_state_dict(state)
    assert torch.equal(second(images), out), "the same dice after a resume"
    for op in ("color", "translation", "cutout"):
        x = images.clone().requires_grad_(True)
        DiffAugment(op, 1.0, seed=2)(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, op
    half = DiffAugment("cutout", 0.5, seed=3)(images.repeat(16, 1, 1, 1))
    changed = (half != images.repeat(16, 1, 1, 1)).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.8, "each image transformed with probability p"


@pytest.mark.parametrize("objective, expected", [
    # the generators' two adversarial terms (fakes carrying gradients), then real and pooled fake for each D
    ("cyclegan", [True, True, False, False, False, False]),
    # D's step first (real B, then the detached translation), then G's adversarial term
    ("cut", [False, False, True]), ("fastcut", [False, False, True])])
def test_diffaug_sees_everything_the_discriminators_see(objective, expected):
    cfg = load_config(None, ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.n_layers_d=1",
                             "train.diffaug=color,translation,cutout", f"model.objective={objective}"])
    accelerator = fresh_accelerator()
    nets, opts, pools = build_training(accelerator, cfg)
    calls = []

    class Counting(DiffAugment):
        def __call__(self, images):
            calls.append(images.requires_grad)
            return super().__call__(images)

    pools.augment.__class__ = Counting
    batch = {k: torch.rand(2, 3, 16, 16) * 2 - 1 for k in "AB"}
    objective_for(cfg).train_step(accelerator, nets, opts, pools, batch, cfg)
    assert calls == expected


@pytest.mark.parametrize("gan_mode, score, real, fake", [("lsgan", 1.0, 1.0, 0.0), ("lsgan", 0.2, 0.0, 1.0),
                                                           ("vanilla", 0.3, 1.0, 0.0), ("vanilla", -0.3, 0.0, 1.0)])
def test_discriminator_accuracy_reads_scores_by_the_gan_mode(gan_mode, score, real, fake):
    cfg = load_config(None, ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.n_layers_d=1",
                             f"train.gan_mode={gan_mode}"])
    accelerator = fresh_accelerator()
    nets, opts, pools = build_training(accelerator, cfg)
    for d in (nets.d_a, nets.d_b):  # a discriminator that says `score` to everything
        last = d.model[-1]
        torch.nn.init.zeros_(last.weight), torch.nn.init.constant_(last.bias, score)
    health = train_step(accelerator, nets, opts, pools, {k: torch.rand(1, 3, 16, 16) * 2 - 1 for k in "AB"},
                        cfg).health
    assert (health.d_a_real.item(), health.d_a_fake.item()) == (real, fake)
    assert health.g_ab_change.item() > 0


@pytest.mark.parametrize("g, d, direction", [("g_ab", "d_a", "A->B"), ("g_ba", "d_b", "B->A")])
def test_health_warnings_fire_on_constructed_cases_once(g, d, direction):
    healthy = {"health/g_ab_change": 0.4, "health/g_ba_change": 0.3, "health/d_a_real": 0.7,
               "health/d_a_fake": 0.6, "health/d_b_real": 0.8, "health/d_b_fake": 0.5}
    monitor = HealthMonitor(0.01, 0.99)
    assert all(monitor.check(healthy) == [] for _ in range(10))
    collapsed = {**healthy, f"health/{g}_change": 0.004, f"health/{d}_real": 0.999, f"health/{d}_fake": 0.995}
    said = [monitor.check(collapsed) for _ in range(HEALTH_LOGS + 3)]
    assert [len(s) for s in said] == [0] * (HEALTH_LOGS - 1) + [2, 0, 0, 0], "once, after the streak"
    assert f"{g} ({direction}) has returned its input almost unchanged" in said[HEALTH_LOGS - 1][0]
    assert f"{d} has told real from fake almost always" in said[HEALTH_LOGS - 1][1]
    one_good_log = {**collapsed, f"health/{d}_fake": 0.9}
    assert monitor.check(one_good_log) == [] and monitor.check(collapsed) == [], "a broken streak starts again"


def test_the_trainer_prints_each_warning_once_when_its_condition_holds(demo_shards, tmp_path):
    # thresholds that any run crosses (every change is below 100; with the vanilla loss's cut at 0
    # about half of the patches count right from the start, so every accuracy is above 0): the
    # warnings must reach the log from the real metrics, each once after 3 logs
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, tmp_path / "run", "train.max_steps=5", "tracking.mode=disabled",
                          "train.gan_mode=vanilla", "tracking.warn_identity_change=100", "tracking.warn_d_accuracy=0"))
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert sorted(w.split()[1] for w in warnings) == ["d_a", "d_b", "g_ab", "g_ba"], warnings
    assert all("for 3 logs" in w for w in warnings)


def official_files(folder, spec, ndf):
    """Random official-layout files (our networks share the layout); returns their state_dicts."""
    folder.mkdir()
    states = {}
    for file, net in (("latest_net_G_A.pth", ResnetGenerator(spec)), ("latest_net_G_B.pth", ResnetGenerator(spec)),
                      ("latest_net_D_A.pth", NLayerDiscriminator(3, ndf, 1)),
                      ("latest_net_D_B.pth", NLayerDiscriminator(3, ndf, 1))):
        states[file] = {k: torch.randn_like(v) * 0.02 for k, v in net.state_dict().items()}
        torch.save(states[file], folder / file)
    return states


def test_warm_starts_from_official_exports_and_checkpoints(demo_shards, tmp_path):
    torch.manual_seed(0)
    official = official_files(tmp_path / "official", GeneratorSpec(ngf=8, n_blocks=1), 8)
    nearly_frozen = ["train.max_steps=1", "train.lr=1e-12", "tracking.mode=disabled"]
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, tmp_path / "from-official", *nearly_frozen, f"init_from={tmp_path / 'official'}"))
    assert "initialised g_ab, g_ba, d_a, d_b from" in result.stdout
    weights = final_weights(tmp_path / "from-official")
    for ours, theirs in (("g_ab", "latest_net_G_A.pth"), ("g_ba", "latest_net_G_B.pth"),
                         ("d_b", "latest_net_D_A.pth"), ("d_a", "latest_net_D_B.pth")):  # D_A judges B
        assert max((weights[ours][k] - official[theirs][k]).abs().max() for k in official[theirs]) < 1e-9, ours
    from_export = script("train.py", "--config", "configs/demo.yaml",
                         *tiny(demo_shards, tmp_path / "from-export", *nearly_frozen,
                               f"init_from={tmp_path / 'from-official' / 'export'}"))
    assert "initialised g_ab, g_ba from" in from_export.stdout and "d_a and d_b start fresh" in from_export.stdout
    resumed = script("train.py", "--config", "configs/demo.yaml",
                     *tiny(demo_shards, tmp_path / "from-official", "train.max_steps=2", "tracking.mode=disabled",
                           "resume=auto", f"init_from={tmp_path / 'from-export'}"))
    assert "resumed from" in resumed.stdout and "initialised" not in resumed.stdout, "a resume wins"
    assert "note: init_from=" in resumed.stdout and "is not used: the run resumes" in resumed.stdout
    from_run = script("train.py", "--config", "configs/demo.yaml",
                      *tiny(demo_shards, tmp_path / "from-run", *nearly_frozen,
                            f"init_from={tmp_path / 'from-official'}"))
    assert "initialised g_ab, g_ba, d_a, d_b from" in from_run.stdout and "step_0000002" in from_run.stdout
    wrong = script("train.py", "--config", "configs/demo.yaml",
                   *tiny(demo_shards, tmp_path / "wrong", "model.ngf=16", f"init_from={tmp_path / 'official'}"),
                   check=False)
    assert wrong.returncode == 2 and "does not fit the expected network g_ab" in wrong.stderr
    taken = script("train.py", "--config", "configs/demo.yaml",
                   *tiny(demo_shards, tmp_path / "from-run", *nearly_frozen, "resume=null",
                         f"init_from={tmp_path / 'official'}"), check=False)
    assert taken.returncode == 2 and "already holds checkpoints of another run" in taken.stderr


def test_a_longer_schedule_goes_on_without_a_jump(noise_shards, tmp_path):
    # 16 images at batch 2: 8 steps per epoch. First 1 + 1 epochs (C = 8, D = 8), stopped at step 12
    # halfway down; then resumed with 3 decay epochs: from 0.5 at step 12 to zero at step 32.
    out, lr = tmp_path / "run", 5e-4
    common = ["train.epochs=1", "tracking.mode=disabled", "train.checkpoint_every=4"]
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(noise_shards, out, *common, "train.decay_epochs=1", "train.max_steps=12"))
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(noise_shards, out, *common, "train.decay_epochs=3", "train.max_steps=20", "resume=auto"))
    assert "goes on from 0.00025 at step 12" in result.stdout
    logged = {r["step"]: r["lr/g"] for r in rows(out)}
    assert [logged[s] for s in range(1, 13)] == pytest.approx([closed_form(lr, 8, 8, s) for s in range(1, 13)])
    assert [logged[s] for s in range(13, 21)] == pytest.approx([lr * 0.5 * (32 - (s - 1)) / 20 for s in range(13, 21)])


@pytest.mark.slow
@pytest.mark.parametrize("before, after, objective", [  # heavy, both: make test's budget; the lanes' exact
    pytest.param(2, 1, "cut", marks=pytest.mark.heavy),  # continuation after an elastic resume stays there
    pytest.param(1, 2, "cyclegan", marks=pytest.mark.heavy)])  # (test_stream_positions.py)
def test_elastic_resume_on_another_world_size(demo_shards, tmp_path, before, after, objective):
    # the global batch (batch x accumulation x processes) stays 2: the unit steps count in. Going down
    # to one process, the loader workers change too (1 -> 2); the averaged generators ride along.
    out = tmp_path / "run"
    common = ["tracking.mode=disabled", "train.checkpoint_every=2", "train.ema_decay=0.9", f"model.objective={objective}"]
    keep = {1: ["train.batch_size=2", f"data.num_workers={2 if before == 2 else 1}"],
            2: ["train.batch_size=1", "data.num_workers=1"]}
    config = str(ROOT / "configs/demo.yaml")
    launch(before, TRAIN, "--config", config, *tiny(demo_shards, out, *common, *keep[before], "train.max_steps=2"))
    sums = json.loads((out / "checksums.json").read_text())["ranks"]
    assert "g_ab_ema" in sums[0] and all(s == sums[0] for s in sums), "the average is the same on every rank"
    refused = launch(after, TRAIN, "--config", config,
                     *tiny(demo_shards, out, *common, *keep[after], "train.max_steps=4", "resume=auto"), check=False)
    assert refused.returncode != 0 and "resume_elastic=true" in refused.stdout + refused.stderr
    other_batch = launch(after, TRAIN, "--config", config,
                         *tiny(demo_shards, out, *common, "train.batch_size=4", "train.max_steps=4", "resume=auto",
                               "resume_elastic=true"), check=False)
    assert other_batch.returncode != 0 and "global batch of 2 images per step" in other_batch.stdout + other_batch.stderr
    result = launch(after, TRAIN, "--config", config,
                    *tiny(demo_shards, out, *common, *keep[after], "train.max_steps=4", "resume=auto",
                          "resume_elastic=true"))
    assert "no longer bitwise reproducible" in result.stdout and "resumed from" in result.stdout
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    last = complete_checkpoints(out / "checkpoints")[-1]
    assert json.loads((last / "state.json").read_text())["world_size"] == after
    pools = [torch.load(last / f"rank_{r}.pt", weights_only=True)["pools"]["fake_b"]["images"] for r in range(after)]
    if objective == "cut":  # no image pool: nothing to carry over
        assert [len(p) for p in pools] == [0]
    elif after == 2:  # rank 0 kept its 4 (2 steps x 2 images) and added 2; rank 1 is new: only its own 2 steps x 1
        assert (len(pools[0]), len(pools[1])) == (6, 2)
        sums = json.loads((out / "checksums.json").read_text())["ranks"]
        assert "g_ab_ema" in sums[0] and sums[0] == sums[1]
    else:  # rank 0 kept its pool (2 steps x 1 image) and added 2 steps x 2 images; rank 1's is gone
        assert len(pools[0]) == 6
