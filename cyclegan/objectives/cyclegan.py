"""CycleGAN (Zhu et al. 2017): one update of all four networks, in the official order.

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
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from cyclegan.config import RunConfig
from cyclegan.losses import adversarial_loss, cycle_loss, identity_loss
from cyclegan.models import GeneratorSpec, NLayerDiscriminator, ResnetGenerator
from cyclegan.step import Networks, Optimizers, Pools, Stacked, StepResult, accuracy, change, set_requires_grad

OPTIMIZED = {"g": ("g_ab", "g_ba"), "d": ("d_a", "d_b")}  # one Adam over both generators, one over both discriminators


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
    """Each discriminator's accuracy on real and on (pooled) fake images, and how far each
    generator moves its input."""

    d_a_real: torch.Tensor
    d_a_fake: torch.Tensor
    d_b_real: torch.Tensor
    d_b_fake: torch.Tensor
    g_ab_change: torch.Tensor
    g_ba_change: torch.Tensor


def build_networks(cfg: RunConfig) -> Networks:
    m = cfg.model
    shape = {"ngf": m.ngf, "n_blocks": m.n_blocks, "norm": m.norm, "dropout": m.dropout, "antialias": m.antialias}
    return Networks(
        g_ab=ResnetGenerator(GeneratorSpec(m.input_nc, m.output_nc, **shape), m.init_gain, m.init),
        g_ba=ResnetGenerator(GeneratorSpec(m.output_nc, m.input_nc, **shape), m.init_gain, m.init),
        d_a=NLayerDiscriminator(m.input_nc, m.ndf, m.n_layers_d, m.norm, m.init_gain, m.antialias, m.init),
        d_b=NLayerDiscriminator(m.output_nc, m.ndf, m.n_layers_d, m.norm, m.init_gain, m.antialias, m.init),
    )


def train_step(
    accelerator: Accelerator, nets: Networks, opts: Optimizers, pools: Pools, batch: dict, cfg: RunConfig,
    step: int = 0, mark: Callable[[str], None] = lambda phase: None,
) -> StepResult:
    """One micro-step of optimizer step `step` (unused here: nothing is drawn per step);
    `mark(phase)` is called as each phase ends (the benchmark times them)."""
    t = cfg.train
    real_a, real_b = batch["A"], batch["B"]
    g_ab, g_ba, d_a, d_b = nets.g_ab, nets.g_ba, nets.d_a, nets.d_b
    lambda_idt = t.lambda_cycle * t.lambda_identity
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
        adv_ab = adversarial_loss(d_b(augment(fake_b)), True, t.gan_mode)
        adv_ba = adversarial_loss(d_a(augment(fake_a)), True, t.gan_mode)
        cycle_a = cycle_loss(rec_a, real_a) * t.lambda_cycle
        cycle_b = cycle_loss(rec_b, real_b) * t.lambda_cycle
        loss_g = adv_ab + adv_ba + cycle_a + cycle_b + idt_a + idt_b
        accelerator.backward(loss_g)
        mark("generators")
        grad_norm_g = opts.guard.step(opts.g, t.grad_clip)
        opts.g.zero_grad(set_to_none=True)
        mark("optimizers")
        set_requires_grad([d_a, d_b], True)

        # 3. discriminators: real vs pooled fake, half weight each, one backward per discriminator
        pooled_b = pools.fake_b.query(fake_b.detach())
        real_b_score, fake_b_score = d_b(augment(real_b)), d_b(augment(pooled_b))
        loss_d_b = 0.5 * (adversarial_loss(real_b_score, True, t.gan_mode)
                          + adversarial_loss(fake_b_score, False, t.gan_mode))
        accelerator.backward(loss_d_b)
        pooled_a = pools.fake_a.query(fake_a.detach())
        real_a_score, fake_a_score = d_a(augment(real_a)), d_a(augment(pooled_a))
        loss_d_a = 0.5 * (adversarial_loss(real_a_score, True, t.gan_mode)
                          + adversarial_loss(fake_a_score, False, t.gan_mode))
        accelerator.backward(loss_d_a)
        mark("discriminators")
        grad_norm_d = opts.guard.step(opts.d, t.grad_clip)
        opts.d.zero_grad(set_to_none=True)
        opts.guard.end_step()
        mark("optimizers")

    terms = (adv_ab, adv_ba, cycle_a, cycle_b, idt_a, idt_b, loss_d_a, loss_d_b)
    with torch.no_grad():
        health = StepHealth(accuracy(real_a_score, True, t.gan_mode), accuracy(fake_a_score, False, t.gan_mode),
                            accuracy(real_b_score, True, t.gan_mode), accuracy(fake_b_score, False, t.gan_mode),
                            change(fake_b, real_a), change(fake_a, real_b))
    norms = None if grad_norm_g is None else {"g": grad_norm_g, "d": grad_norm_d}
    return StepResult(StepLosses(*(term.detach() for term in terms)), health, norms)
