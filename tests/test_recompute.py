"""Activation checkpointing (`perf.activation_checkpointing`): recomputing activations in the
backward pass changes nothing but memory and time. Gradients, weights and the RNG stream after
real training steps equal those without it, in float64 (so on any CPU), for every objective,
with gradient accumulation, dropout, under DDP, bf16 autocast and torch.compile; the negative
control (the recomputation drawing new dropout masks) is what the tolerance must catch."""

import functools

import pytest
import torch

import cyclegan.models.recompute as recompute
from cyclegan.build import build_training
from cyclegan.config import load_config
from cyclegan.errors import ConfigError
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
from cyclegan.objectives import objective_for
from tests.conftest import ROOT, launch
from tests.harness.cut_ranks import two_steps
from tests.test_step import fresh_accelerator

OBJECTIVE_KEYS = {"cyclegan": ["train.pool_size=2"], "cut": ["model.head_nc=8", "train.num_patches=8"],
                  "fastcut": ["model.head_nc=8", "train.num_patches=8"]}


def trained(objective: str, level: str, precision: str = "no", compile: bool = False, control: bool = False,
            monkeypatch=None) -> dict:
    """Gradients, weights and the RNG state after two optimizer steps of two micro-batches each,
    with dropout in the generators."""
    cfg = load_config(None, [f"model.objective={objective}", "model.ngf=4", "model.n_blocks=2", "model.ndf=4",
                             "model.n_layers_d=2", "model.dropout=true", "train.grad_accum=2",
                             "train.adam_eps=1.0", f"perf.activation_checkpointing={level}",
                             f"perf.compile={compile}", *OBJECTIVE_KEYS[objective]])
    if control:  # the recomputation draws new dropout masks: what a lost RNG state would do
        monkeypatch.setattr(recompute, "checkpoint", functools.partial(recompute.checkpoint, preserve_rng_state=False))
    accelerator = fresh_accelerator(gradient_accumulation_steps=2, mixed_precision=precision)
    torch.manual_seed(0)
    nets, opts, pools = build_training(accelerator, cfg)
    grads = {}  # each optimizer's gradients as it steps, in parameter order

    def record(name, optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads[f"{name}/{len(grads)}"] = torch.cat([p.grad.detach().flatten() for p in params])

    for name, optimizer in opts.named().items():
        optimizer.optimizer.register_step_pre_hook(functools.partial(record, name))  # inside Accelerate's wrapper
    dtype = torch.get_default_dtype()
    generator = torch.Generator().manual_seed(1)
    for micro in range(4):
        batch = {k: torch.rand((1, 3, 24, 24), generator=generator, dtype=dtype) * 2 - 1 for k in "AB"}
        objective_for(cfg).train_step(accelerator, nets, opts, pools, batch, cfg, step=micro // 2)
    unwrapped = {name: accelerator.unwrap_model(net) for name, net in nets.named().items()}
    return {"weights": {n: net.state_dict() for n, net in unwrapped.items()},
            "grads": {"all": grads}, "rng": torch.get_rng_state()}


def difference(a: dict, b: dict) -> float:
    """The largest difference of any weight or gradient; infinite where the keys differ."""
    worst = 0.0
    for part in ("weights", "grads"):
        for name in a[part]:
            if a[part][name].keys() != b[part][name].keys():
                return float("inf")
            for key, value in a[part][name].items():
                worst = max(worst, (value.double() - b[part][name][key].double()).abs().max().item())
    return worst


@pytest.mark.parametrize("objective", ["cyclegan", "cut", "fastcut"])
def test_checkpointing_changes_no_gradient_weight_or_random_draw(float64, monkeypatch, objective):
    plain = trained(objective, "none")
    assert len(plain["grads"]["all"]) == 2 * (3 if objective != "cyclegan" else 2)  # every optimizer step seen
    for level in ("blocks", "all"):
        checkpointed = trained(objective, level)
        assert difference(checkpointed, plain) < 1e-13, level  # the same checkpoint keys, the same values
        assert torch.equal(checkpointed["rng"], plain["rng"]), level
    # negative control: new dropout masks in the recomputation move the gradients far past the tolerance
    assert difference(trained(objective, "blocks", control=True, monkeypatch=monkeypatch), plain) > 1e-6


def test_checkpointing_under_bf16_autocast_recomputes_in_bf16(monkeypatch):
    """Autocast does not touch float64, so this one runs in float32: the recomputation must run
    in bf16 as the forward did. Same kernels on the same inputs: equal up to nothing but
    accumulation order in the backward; the control moves them by orders of magnitude more."""
    plain = trained("cyclegan", "none", precision="bf16")
    checkpointed = trained("cyclegan", "all", precision="bf16")
    control = difference(trained("cyclegan", "all", precision="bf16", control=True, monkeypatch=monkeypatch), plain)
    assert difference(checkpointed, plain) < 1e-3 * control
    assert torch.equal(checkpointed["rng"], plain["rng"])


@pytest.mark.slow
def test_checkpointing_two_ranks_with_accumulation_equal_one_rank_without(float64, tmp_path):
    """CUT with every stage recomputed on two gloo ranks of two micro-batches each, against one
    rank, one micro-batch, no checkpointing (tests/harness/cut_ranks.py)."""
    out = tmp_path / "ranks.pt"
    launch(2, str(ROOT / "tests/harness/cut_ranks.py"), out, "cut", 2, "-", "perf.activation_checkpointing=all")
    ranks = torch.load(out, weights_only=True)
    one = two_steps(fresh_accelerator(), "cut", 1)
    assert max((ranks[n][k] - one[n][k]).abs().max().item() for n in one for k in one[n]) < 1e-12


@pytest.mark.heavy  # two compilations of four networks (about a minute); the eager checks above are in make test
def test_checkpointing_under_compile(float64, monkeypatch):
    plain = trained("cyclegan", "none", compile=True)
    checkpointed = trained("cyclegan", "all", compile=True)
    assert difference(checkpointed, plain) < 1e-12
    assert torch.equal(checkpointed["rng"], plain["rng"])


def test_batch_norm_is_refused_with_checkpointing():
    with pytest.raises(ConfigError, match="perf.activation_checkpointing.*norm=instance"):
        load_config(None, ["model.norm=batch", "perf.activation_checkpointing=blocks"])


@pytest.mark.parametrize("norm, antialias", [("instance", False), ("none", True)])
def test_features_and_their_gradients_are_those_of_the_plain_network_at_every_tap(float64, norm, antialias):
    """CUT reads features inside the generator: each tap (a norm's output followed by an in-place
    ReLU included) gives the same values and gradients at every level, and each level keeps less."""
    spec = GeneratorSpec(ngf=4, n_blocks=3, norm=norm, antialias=antialias)
    net = ResnetGenerator(spec)
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outcomes, kept = {}, {}
    for level in ("none", "blocks", "all"):
        net.recompute = level
        for taps in (spec.feature_layers, (0, 2, 5, 11), None):
            net.zero_grad()
            out = net(image, taps)
            outs = out if taps else [out]
            sum((o.square() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()  # keeps o
            outcomes[level, taps] = [o.detach() for o in outs] + [p.grad.clone() for p in net.parameters() if p.grad is not None]
            saved = []  # counted apart: saved-tensor hooks turn autograd's in-place checks off
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                net(image, taps)
            kept[level, taps] = sum(saved)
        for taps in (spec.feature_layers, (0, 2, 5, 11), None):
            for mine, plain in zip(outcomes[level, taps], outcomes["none", taps]):
                torch.testing.assert_close(mine, plain, rtol=0, atol=1e-13)
    for taps in (spec.feature_layers, (0, 2, 5, 11), None):  # what each level keeps outside its recomputed stages
        assert kept["none", taps] >= kept["blocks", taps] > kept["all", taps], taps
        assert kept["none", taps] > kept["blocks", taps] or taps[-1] < spec.stages[1].start  # no block reached
