"""The training loop with real processes on the CPU: DDP agreement, accumulation, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cyclegan.checkpoint import complete_checkpoints
from tests.conftest import ROOT, final_weights, launch, max_difference, script, tiny

TRAIN = str(ROOT / "scripts/train.py")
FP64 = str(ROOT / "tests/harness/train_fp64.py")


def metric_rows(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def loss_rows(output):
    return {row["step"]: {k: v for k, v in row.items() if k.startswith("loss/")} for row in metric_rows(output)}


def train(nproc, *overrides):
    return launch(nproc, TRAIN, "--config", str(ROOT / "configs/demo.yaml"), *overrides)


@pytest.mark.slow
def test_two_ranks_keep_identical_weights_and_see_different_samples(demo_shards, tmp_path):
    out = tmp_path / "run"
    result = train(2, *tiny(demo_shards, out, "train.max_steps=4"))
    assert "global batch 4 = 2 per device x 1 accumulation x 2 process(es)" in result.stdout
    checksums = json.loads((out / "checksums.json").read_text())
    assert checksums["step"] == 4 and len(checksums["ranks"]) == 2
    assert checksums["ranks"][0] == checksums["ranks"][1]
    last = complete_checkpoints(out / "checkpoints")[-1]
    pools = [torch.load(last / f"rank_{r}.pt", weights_only=True)["pools"]["fake_b"]["images"] for r in (0, 1)]
    assert len(pools[0]) == 8 and not any(torch.equal(x, y) for x in pools[0] for y in pools[1])


@pytest.mark.slow
# heavy, both: beyond make test's budget; accumulation within DDP stays there through CUT's check in test_cut.py
@pytest.mark.parametrize("nproc", [pytest.param(1, marks=pytest.mark.heavy), pytest.param(2, marks=pytest.mark.heavy)])
def test_accumulation_equals_a_larger_batch(noise_shards, tmp_path, nproc):
    # In float64, so that any CPU's kernels round far below the tolerance. With eps=1, Adam's first
    # steps are lr * g / (|g| + 1), nearly linear in the gradient (the paper's eps would make them
    # sign-like, blind to a micro-batch counted twice). A pool of one image swaps on every other query.
    def weights_after(name, batch, accum):
        launch(nproc, FP64, "--config", str(ROOT / "configs/demo.yaml"),
               *tiny(noise_shards, tmp_path / name, "train.max_steps=2", "train.pool_size=1", "train.adam_eps=1.0",
                     "tracking.mode=disabled", f"train.batch_size={batch}", f"train.grad_accum={accum}"))
        return final_weights(tmp_path / name)

    batch = weights_after("batch", 2, 1)
    assert max_difference(weights_after("accum", 1, 2), batch) < 1e-10
    # negative control: one image per optimizer step instead of two, as a dropped micro-batch gives
    assert max_difference(weights_after("dropped", 1, 1), batch) > 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("nproc, extra", [  # heavy: beyond make test's budget, each resuming what another does
    pytest.param(1, [], marks=pytest.mark.heavy), pytest.param(2, [], marks=pytest.mark.heavy),  # 2-cut: two ranks
    pytest.param(1, ["train.ema_decay=0.9", "train.diffaug=color,translation,cutout"], marks=pytest.mark.heavy),
    pytest.param(1, ["model.objective=fastcut", "train.ema_decay=0.9", "train.diffaug=color,translation,cutout"],
                 marks=pytest.mark.heavy),  # the averages resume exactly in test_beyond's elastic resume too
    (2, ["model.objective=cut"]),
], ids=["1", "2", "1-ema-diffaug", "1-fastcut-ema-diffaug", "2-cut"])
def test_resume_is_exact(demo_shards, tmp_path, nproc, extra):
    n = 3
    common = ["data.num_workers=1", "train.checkpoint_every=2", *extra]
    train(nproc, *tiny(demo_shards, tmp_path / "whole", *common, f"train.max_steps={2 * n}"))
    train(nproc, *tiny(demo_shards, tmp_path / "split", *common, f"train.max_steps={n}"))
    result = train(nproc, *tiny(demo_shards, tmp_path / "split", *common, f"train.max_steps={2 * n}", "resume=auto"))
    assert f"at step {n}" in result.stdout
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    averaged = [p.stem for p in complete_checkpoints(tmp_path / "whole" / "checkpoints")[-1].glob("*_ema.safetensors")]
    one_way = any(o in extra for o in ("model.objective=cut", "model.objective=fastcut"))
    assert len(averaged) == ("train.ema_decay=0.9" in extra) * (1 if one_way else 2)
    for name in averaged:  # the averaged generators resume exactly too
        whole[name], split[name] = (load_file(str(complete_checkpoints(tmp_path / run / "checkpoints")[-1] /
                                                  f"{name}.safetensors")) for run in ("whole", "split"))
    for name in whole:
        for key in whole[name]:
            assert torch.equal(whole[name][key], split[name][key]), f"{name}.{key} differs after resume"
    assert loss_rows(tmp_path / "whole") == loss_rows(tmp_path / "split")
    assert [r["step"] for r in metric_rows(tmp_path / "split")] == list(range(1, 2 * n + 1))


@pytest.mark.slow
@pytest.mark.parametrize("objective, falling, by", [("cyclegan", ("cycle_a", "cycle_b"), 0.7),
                                                    ("cut", ("nce", "nce_idt"), 0.9)])  # PatchNCE falls slowly at first
def test_bf16_trains_with_falling_losses(demo_shards, tmp_path, objective, falling, by):
    out = tmp_path / "bf16"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.mixed_precision=bf16", "train.max_steps=40", "tracking.log_every=10",
                 f"model.objective={objective}"))
    rows = metric_rows(out)
    losses = [sum(r[f"loss/{name}"] for name in falling) for r in rows]
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < by * losses[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, fp16 is a real choice")
def test_fp16_on_the_cpu_is_refused_instead_of_quietly_training_fp32(demo_shards, tmp_path):
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, tmp_path / "fp16", "train.mixed_precision=fp16"), check=False)
    assert result.returncode == 2 and "train.mixed_precision=fp16 needs a GPU" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast and its GradScaler need a CUDA device")
@pytest.mark.parametrize("objective", ["cyclegan", "cut"])
def test_fp16_scaler_path_runs(demo_shards, tmp_path, objective):
    out = tmp_path / "fp16"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.mixed_precision=fp16", "train.max_steps=10", "train.grad_clip=1.0",
                 f"model.objective={objective}"))
    assert "scaler" in torch.load(complete_checkpoints(out / "checkpoints")[-1] / "optim.pt", weights_only=True)


def test_world_size_or_architecture_change_is_refused(demo_shards, tmp_path):
    out = tmp_path / "run"
    script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, out, "train.max_steps=1"))
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, out, "train.max_steps=2", "resume=auto", "model.ngf=16"), check=False)
    assert result.returncode == 2 and "model.ngf is 8 there, 16 here" in result.stderr
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, out, "train.max_steps=2", "resume=auto", "data.num_workers=2"), check=False)
    assert result.returncode == 2 and "resume with the same values" in result.stderr


@pytest.mark.slow
def test_a_tiny_run_learns_the_demo_translation(demo_shards, tmp_path):
    from cyclegan.config import DataConfig
    from cyclegan.data.sources import find_sources
    from cyclegan.data.stream import iter_test_images
    from cyclegan.models import GeneratorSpec, ResnetGenerator, load_generator

    out = tmp_path / "learn"
    result = script("train.py", "--config", "configs/demo.yaml", f"data.root={demo_shards}", f"output_dir={out}",
                    "train.max_steps=80", "tracking.log_every=20")
    health = [row for row in metric_rows(out) if "health/g_ab_change" in row]
    assert len(health) == 4 and all(0 <= r["health/d_a_real"] <= 1 and r["health/g_ab_change"] > 0 for r in health)
    assert "warning:" not in result.stdout + result.stderr, "the health checks stay quiet on a healthy run"
    sources = find_sources(DataConfig(root=str(demo_shards)))
    real_a = torch.stack([t for *_, t in iter_test_images(sources.test_a, 64)])
    truth_b = torch.stack([t for *_, t in iter_test_images(sources.test_b, 64)])
    torch.manual_seed(0)
    untrained = ResnetGenerator(GeneratorSpec(ngf=16, n_blocks=3))
    with torch.no_grad():
        before = (untrained(real_a) - truth_b).abs().mean().item()
        after = (load_generator(out / "export")(real_a) - truth_b).abs().mean().item()
    assert after < 0.6 * before, (before, after)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_0000080_AtoB.png", "step_0000080_BtoA.png"]
