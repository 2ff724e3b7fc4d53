"""The four-network update, in process: against the official implementation's arithmetic, and
with fp16 loss scaling under gradient accumulation. Both run in float64, so that they hold on
any CPU; each has a negative control that its tolerance must catch."""

import zlib
from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from cyclegan.build import build_training
from cyclegan.config import load_config
from cyclegan.optim import StepGuard
from cyclegan.objectives import objective_for
from cyclegan.objectives.cyclegan import train_step

# Recorded by running the official code (junyanz/pytorch-CycleGAN-and-pix2pix: CycleGANModel.
# optimize_parameters with its networks.py, 2019 layout, unchanged arithmetic since) in float64:
# resnet_6blocks generators, basic (3-layer) discriminators, ngf = ndf = 8, instance norm, lsgan,
# pool_size 0, lr 2e-4, beta1 0.5, lambda_A = lambda_B = 10, lambda_identity 0.5; every weight
# and bias of network N seeded as randn(generator seeded with crc32("N/key")) * 0.02; three steps
# on 2 x 3 x 32 x 32 batches, real_A = rand(seed 1000 + i) * 2 - 1, real_B = rand(seed 2000 + i) * 2 - 1.
# The same run with other CPU kernels (ONEDNN_MAX_CPU_ISA=SSE41, ATEN_CPU_CAPABILITY=default)
# agreed to 3e-15 on the losses and 3e-11 on the weight changes.
OFFICIAL_LOSSES = [
    {"D_A": 0.6528169045987693, "G_A": 1.0842308325983474, "cycle_A": 5.383622994032628, "idt_A": 2.6337301010388496,
     "D_B": 0.6768960725071682, "G_B": 0.979682213290171, "cycle_B": 5.3013918269700175, "idt_B": 2.6878601836968423},
    {"D_A": 0.5775444717940961, "G_A": 1.0182774961859375, "cycle_A": 5.361286636947803, "idt_A": 2.6497047868768053,
     "D_B": 0.5561404150394952, "G_B": 0.9632238543151272, "cycle_B": 5.316290604571295, "idt_B": 2.6863614277151058},
    {"D_A": 0.6245482483420342, "G_A": 0.6928570855378021, "cycle_A": 5.35859780534643, "idt_A": 2.674788117076638,
     "D_B": 0.4887311568291087, "G_B": 0.6832527185787897, "cycle_B": 5.356820259789624, "idt_B": 2.6541906217570412},
]
# Over all parameters of each network, with delta = weights after three steps - seeded weights:
# sum |delta| and sum delta^2. (Conv biases feeding instance norm get a zero gradient plus
# rounding noise that Adam turns into updates of up to 2.5e-10: these sums barely see them.)
OFFICIAL_DELTAS = {
    "G_A": (38.59340623793198, 0.016332533075598774),
    "G_B": (39.063878842059225, 0.016411478924677023),
    "D_A": (14.942515278103023, 0.006680372364709954),
    "D_B": (14.910423763947183, 0.006560613205770158),
}
# Official names: G_A maps A -> B (our g_ab); D_A judges B images (our d_b), D_B judges A (our d_a).
OFFICIAL_NAMES = {"g_ab": "G_A", "g_ba": "G_B", "d_b": "D_A", "d_a": "D_B"}
OUR_LOSSES = {"D_A": "d_b", "G_A": "adv_ab", "cycle_A": "cycle_a", "idt_A": "idt_b",
              "D_B": "d_a", "G_B": "adv_ba", "cycle_B": "cycle_b", "idt_B": "idt_a"}


def fresh_accelerator(**kwargs) -> Accelerator:
    """A CPU Accelerator of its own (Accelerate keeps its state in process-wide singletons)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True, **kwargs)


def seeded(name: str, shape: torch.Size) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 0.02


def uniform(seed: int) -> torch.Tensor:
    return torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def official_scenario(names: dict[str, str]) -> tuple[list[dict], dict]:
    """Our update on the recorded scenario; `names` says which official network seeds each of ours."""
    cfg = load_config(None, ["model.ngf=8", "model.n_blocks=6", "model.ndf=8", "train.pool_size=0"])
    accelerator = fresh_accelerator()
    nets, opts, pools = build_training(accelerator, cfg)
    start = {}
    for ours, theirs in names.items():
        net = accelerator.unwrap_model(getattr(nets, ours))
        net.load_state_dict({k: seeded(f"{theirs}/{k}", v.shape) for k, v in net.state_dict().items()})
        start[theirs] = [p.detach().clone() for p in net.parameters()]
    losses = []
    for i in range(3):
        result = train_step(accelerator, nets, opts, pools, {"A": uniform(1000 + i), "B": uniform(2000 + i)}, cfg)
        losses.append({theirs: getattr(result.losses, ours).item() for theirs, ours in OUR_LOSSES.items()})
    deltas = {}
    for ours, theirs in names.items():
        delta = torch.cat([(p.detach() - p0).flatten() for p, p0 in
                           zip(accelerator.unwrap_model(getattr(nets, ours)).parameters(), start[theirs])])
        deltas[theirs] = (delta.abs().sum().item(), delta.square().sum().item())
    return losses, deltas


def matches_official(losses: list[dict], deltas: dict) -> bool:
    # float64 rounding moves these by 1e-14 (losses) and 1e-10 (deltas); a real bug by 1e-3 or more
    same_losses = all(mine[k] == pytest.approx(theirs[k], rel=1e-10) for mine, theirs in zip(losses, OFFICIAL_LOSSES)
                      for k in theirs)
    return same_losses and all(deltas[n] == pytest.approx(OFFICIAL_DELTAS[n], rel=1e-8) for n in OFFICIAL_DELTAS)


def test_update_matches_the_official_implementation(float64):
    losses, deltas = official_scenario(OFFICIAL_NAMES)
    for mine, theirs in zip(losses, OFFICIAL_LOSSES):
        assert mine == pytest.approx(theirs, rel=1e-10)
    for name, figures in OFFICIAL_DELTAS.items():
        assert deltas[name] == pytest.approx(figures, rel=1e-8), name
    # negative control: the discriminators mapped by name (official D_A to our d_a) is a real, easy bug
    swapped = {**OFFICIAL_NAMES, "d_a": "D_A", "d_b": "D_B"}
    assert not matches_official(*official_scenario(swapped))


class AccelerateOrder(StepGuard):
    """The call order of Accelerate's wrapped optimizer, kept here as the negative control: its
    `step()` unscales, steps and updates the scale, once per optimizer."""

    def step(self, optimizer, max_norm: float) -> torch.Tensor | None:
        if not self.accelerator.sync_gradients:
            return None
        optimizer.step()
        return torch.zeros(())

    def end_step(self) -> None:
        pass


def accumulated_run(scaler: bool, guard=StepGuard, steps: int = 4, overflow_step: int = 2, objective: str = "cyclegan"):
    """`steps` optimizer steps of two micro-batches each; the generators' gradients overflow in the
    second micro-batch of `overflow_step`. Returns the weights and the final loss scale."""
    own = ["train.pool_size=4"] if objective == "cyclegan" else ["model.head_nc=8", "train.num_patches=8"]
    cfg = load_config(None, ["model.ngf=4", "model.n_blocks=1", "model.ndf=4", "model.n_layers_d=1",
                             "train.grad_accum=2", f"model.objective={objective}", *own])
    accelerator = fresh_accelerator(gradient_accumulation_steps=2)
    if scaler:  # the fp16 loss scaler, on the CPU: grows after every update (growth_interval=1)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    torch.manual_seed(0)
    nets, opts, pools = build_training(accelerator, cfg)
    opts = replace(opts, guard=guard(accelerator, 0))
    overflowing = {"now": False}
    first = next(accelerator.unwrap_model(nets.g_ab).parameters())
    first.register_hook(lambda grad: grad * float("inf") if overflowing["now"] else grad)
    generator = torch.Generator().manual_seed(1)
    for micro in range(2 * steps):
        overflowing["now"] = micro == 2 * overflow_step + 1
        batch = {k: torch.rand((1, 3, 16, 16), generator=generator, dtype=torch.float64) * 2 - 1 for k in "AB"}
        objective_for(cfg).train_step(accelerator, nets, opts, pools, batch, cfg, step=micro // 2)
    weights = {n: torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(net).parameters()])
               for n, net in nets.named().items()}
    return weights, accelerator.scaler.get_scale() if scaler else None


@pytest.mark.parametrize("objective, misread", [
    # the discriminators' first micro-batch is unscaled by the scale the generators' step left behind
    ("cyclegan", ("d_a", "d_b")),
    # D steps first, then G and F, whose gradients share one backward: F's are unscaled by the
    # scale G's step left behind
    ("cut", ("f",))])
def test_fp16_loss_scaling_is_exact_under_accumulation(float64, objective, misread):
    reference, _ = accumulated_run(scaler=False, objective=objective)
    scaled, scale = accumulated_run(scaler=True, objective=objective)
    # one scale update per optimizer step: grown x2 three times, halved once at the overflow
    assert scale == 2.0**8 * 2**3 / 2
    for name in reference:  # scaling by powers of two is exact: only float64 rounding may differ
        torch.testing.assert_close(scaled[name], reference[name], rtol=0, atol=1e-12, msg=name)
    # negative control: the scale updated inside each optimizer step, as Accelerate's optimizer does
    wrong, _ = accumulated_run(scaler=True, guard=AccelerateOrder, objective=objective)
    assert max((wrong[n] - reference[n]).abs().max().item() for n in misread) > 1e-6
