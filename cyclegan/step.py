"""One CycleGAN update of all four networks, in the official order.

translate both ways -> freeze D -> generator losses, step G -> unfreeze D ->
discriminator losses on real and pooled, detached fakes, step D.

Everything runs inside ONE `accelerator.accumulate(g_ab, g_ba, d_a, d_b)`: two contexts per
step would leave the generator optimizer unstepped under accumulation. D is frozen during
the generator backward so that none of the generator loss leaks into D's accumulated
gradient. Each discriminator's real and fake terms are summed before its single backward,
since two backwards through one DDP module let ranks drift apart. `d_a` judges domain A
images (real_a against fake_a), `d_b` judges domain B; the official code names them the
other way round (its D_A judges B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from accelerate import Accelerator
from torch import nn

from cyclegan.config import TrainConfig
from cyclegan.diffaug import DiffAugment
from cyclegan.losses import adversarial_loss, cycle_loss, identity_loss
from cyclegan.optim import StepGuard
from cyclegan.pool import ImagePool


@dataclass
class Networks:
    g_ab: nn.Module
    g_ba: nn.Module
    d_a: nn.Module
    d_b: nn.Module


@dataclass
class Optimizers:
    g: torch.optim.Optimizer  # one Adam over both generators
    d: torch.optim.Optimizer  # one Adam over both discriminators
    guard: StepGuard  # steps them, or skips them on every rank when their gradients are not finite


@dataclass
class Pools:
    """What each rank draws on its own: the histories of fakes, and the augmentation's dice."""

    fake_a: ImagePool
    fake_b: ImagePool
    augment: DiffAugment


class Stacked:
    """Detached scalar tensors, still on the device: reading them is left to logging steps."""

    def stacked(self) -> torch.Tensor:
        return torch.stack([getattr(self, f.name).float() for f in fields(self)])

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class StepLosses(Stacked):
    adv_ab: torch.Tensor
    adv_ba: torch.Tensor
    cycle_a: torch.Tensor
    cycle_b: torch.Tensor
    idt_a: torch.Tensor
    idt_b: torch.Tensor
    d_a: torch.Tensor
    d_b: torch.Tensor


@dataclass
class StepHealth(Stacked):
    """How the game goes: each discriminator's accuracy on real and on (pooled) fake images, and how
    far each generator moves its input (mean |G(x) - x|, a greyscale input set against each colour
    channel; near 0: it collapsed to the identity)."""

    d_a_real: torch.Tensor
    d_a_fake: torch.Tensor
    d_b_real: torch.Tensor
    d_b_fake: torch.Tensor
    g_ab_change: torch.Tensor
    g_ba_change: torch.Tensor


@dataclass
class StepResult:
    losses: StepLosses
    health: StepHealth
    grad_norm_g: torch.Tensor | None  # set on optimizer (sync) steps only
    grad_norm_d: torch.Tensor | None


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        net.requires_grad_(flag)


def train_step(
    accelerator: Accelerator, nets: Networks, opts: Optimizers, pools: Pools, batch: dict, cfg: TrainConfig,
    mark: Callable[[str], None] = lambda phase: None,
) -> StepResult:
    """One micro-step; `mark(phase)` is called as each phase ends (the benchmark times them)."""
    real_a, real_b = batch["A"], batch["B"]
    g_ab, g_ba, d_a, d_b = nets.g_ab, nets.g_ba, nets.d_a, nets.d_b
    lambda_idt = cfg.lambda_cycle * cfg.lambda_identity
    zero = real_a.new_zeros(())
    augment = pools.augment  # the identity unless train.diffaug: whatever a discriminator sees goes through it
    with accelerator.accumulate(g_ab, g_ba, d_a, d_b):
        # 1. translate both ways
        fake_b = g_ab(real_a)
        rec_a = g_ba(fake_b)
        fake_a = g_ba(real_b)
        rec_b = g_ab(fake_a)

        # 2. generators: identity, adversarial against frozen discriminators, cycle
        set_requires_grad([d_a, d_b], False)
        idt_a = identity_loss(g_ba(real_a), real_a) * lambda_idt if lambda_idt > 0 else zero
        idt_b = identity_loss(g_ab(real_b), real_b) * lambda_idt if lambda_idt > 0 else zero
        adv_ab = adversarial_loss(d_b(augment(fake_b)), True, cfg.gan_mode)
        adv_ba = adversarial_loss(d_a(augment(fake_a)), True, cfg.gan_mode)
        cycle_a = cycle_loss(rec_a, real_a) * cfg.lambda_cycle
        cycle_b = cycle_loss(rec_b, real_b) * cfg.lambda_cycle
        loss_g = adv_ab + adv_ba + cycle_a + cycle_b + idt_a + idt_b
        accelerator.backward(loss_g)
        mark("generators")
        grad_norm_g = opts.guard.step(opts.g, cfg.grad_clip)
        opts.g.zero_grad(set_to_none=True)
        mark("optimizers")
        set_requires_grad([d_a, d_b], True)

        # 3. discriminators: real vs pooled fake, half weight each, one backward per discriminator
        pooled_b = pools.fake_b.query(fake_b.detach())
        real_b_score, fake_b_score = d_b(augment(real_b)), d_b(augment(pooled_b))
        loss_d_b = 0.5 * (adversarial_loss(real_b_score, True, cfg.gan_mode)
                          + adversarial_loss(fake_b_score, False, cfg.gan_mode))
        accelerator.backward(loss_d_b)
        pooled_a = pools.fake_a.query(fake_a.detach())
        real_a_score, fake_a_score = d_a(augment(real_a)), d_a(augment(pooled_a))
        loss_d_a = 0.5 * (adversarial_loss(real_a_score, True, cfg.gan_mode)
                          + adversarial_loss(fake_a_score, False, cfg.gan_mode))
        accelerator.backward(loss_d_a)
        mark("discriminators")
        grad_norm_d = opts.guard.step(opts.d, cfg.grad_clip)
        opts.d.zero_grad(set_to_none=True)
        opts.guard.end_step()
        mark("optimizers")

    terms = (adv_ab, adv_ba, cycle_a, cycle_b, idt_a, idt_b, loss_d_a, loss_d_b)
    cut = 0.5 if cfg.gan_mode == "lsgan" else 0.0  # the score between "real" (1 or +) and "fake" (0 or -)
    with torch.no_grad():
        health = StepHealth((real_a_score > cut).float().mean(), (fake_a_score < cut).float().mean(),
                            (real_b_score > cut).float().mean(), (fake_b_score < cut).float().mean(),
                            (fake_b - real_a).abs().float().mean(), (fake_a - real_b).abs().float().mean())
    return StepResult(StepLosses(*(t.detach() for t in terms)), health, grad_norm_g, grad_norm_d)

