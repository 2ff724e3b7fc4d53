"""CUT and FastCUT (Park et al. 2020, contrastive unpaired translation): one generator G (A -> B),
one discriminator D (judging B) and the patch head F; no cycle, no second generator, no image pool.

G's loss is LSGAN's (x train.lambda_gan) plus PatchNCE: a patch of the translation G(x), seen
through G's own encoder at `model.nce_layers` and projected by F, must pick the patch at the same
place in x out of x's other sampled patches (`train.num_patches` per layer, the same places in
every image; negatives from the same image only). CUT adds the identity term PatchNCE(y, G(y))
on B and averages the two; FastCUT weighs NCE by 10, drops the identity term and translates a
mirrored input half the time, its features mirrored back (flip equivariance).

The update order is the official code's: translate, step D on real B against the detached
translation, then step G and F on G's loss against the stepped D. Under gradient accumulation
that order needs every micro-batch's translation before D steps and D's step before any of
G's losses: each micro-step translates without a graph for D's loss and keeps its images, and
the window's last micro-step, after D's step, runs G's pass over all of them. So accumulation
equals the larger batch exactly (instance norm, no dropout, no DiffAugment: a second pass draws
other dropout masks and augmentations, and batch norm's statistics see it), for one extra forward
of G per micro-batch; without accumulation G runs once. The places of the sampled patches and FastCUT's mirror are drawn from
(seed, step) alone: every rank and micro-batch of a step draws the same, as one large batch
would, and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from cyclegan.config import RunConfig
from cyclegan.data.shares import mix_seed
from cyclegan.losses import adversarial_loss, patch_nce_loss
from cyclegan.models import GeneratorSpec, NLayerDiscriminator, ResnetGenerator
from cyclegan.models.head import PatchHead, feature_channels
from cyclegan.step import Networks, Optimizers, Pools, Stacked, StepResult, accuracy, change, set_requires_grad

OPTIMIZED = {"g": ("g_ab",), "d": ("d_b",), "f": ("f",)}  # G and F step together, each by its own Adam


@dataclass
class CutLosses(Stacked):
    """G's adversarial term; PatchNCE on A -> B and the identity PatchNCE on B (0 when off), each
    times train.lambda_nce and averaged over the layers; D's loss. Under accumulation the
    generator terms of a window are all reported at its last micro-step (their sum; 0 before),
    so that the window's mean is still their mean."""

    adv_ab: torch.Tensor
    nce: torch.Tensor
    nce_idt: torch.Tensor
    d_b: torch.Tensor


@dataclass
class CutHealth(Stacked):
    d_b_real: torch.Tensor
    d_b_fake: torch.Tensor
    g_ab_change: torch.Tensor


def build_networks(cfg: RunConfig) -> Networks:
    m = cfg.model
    spec = GeneratorSpec(m.input_nc, m.output_nc, m.ngf, m.n_blocks, m.norm, m.dropout, m.antialias)
    g = ResnetGenerator(spec, m.init_gain, m.init)
    d = NLayerDiscriminator(m.output_nc, m.ndf, m.n_layers_d, m.norm, m.init_gain, m.antialias, m.init)
    f = PatchHead(feature_channels(g, tuple(m.nce_layers)), m.head_nc, m.init_gain, m.init)
    return Networks(g_ab=g, d_b=d, f=f)


def patch_ids(seed: int, step: int, term: int, layer: int, positions: int, count: int,
              device: torch.device) -> torch.Tensor:
    """The places (flat indices into a layer's H x W) sampled at `layer` for NCE term `term` (0: A,
    1: identity) of optimizer step `step`: `count` distinct ones, or all if there are fewer."""
    generator = torch.Generator().manual_seed(mix_seed(seed, "patches", step, term, layer))
    return torch.randperm(positions, generator=generator)[:count].to(device)


def flipped(seed: int, step: int) -> bool:
    """Whether FastCUT mirrors the inputs of optimizer step `step` (half the steps)."""
    return random.Random(mix_seed(seed, "flip", step)).random() < 0.5


def train_step(
    accelerator: Accelerator, nets: Networks, opts: Optimizers, pools: Pools, batch: dict, cfg: RunConfig,
    step: int = 0, mark: Callable[[str], None] = lambda phase: None,
) -> StepResult:
    """One micro-step of optimizer step `step`; `mark(phase)` is called as each phase ends."""
    t = cfg.train
    g, d, f = nets.g_ab, nets.d_b, nets.f
    real_a, real_b = batch["A"], batch["B"]
    flip = t.flip_equivariance and flipped(cfg.seed, step)
    alone = accelerator.gradient_accumulation_steps == 1  # no window: G's translation keeps its graph
    with accelerator.accumulate(g, d, f):
        # 1. translate; the identity inputs ride in the same batch, as the official code
        source = torch.cat([real_a, real_b]) if t.nce_idt else real_a
        source = source.flip(3) if flip else source
        with contextlib.nullcontext() if alone else torch.no_grad():
            translated = g(source)
        mark("generators")

        # 2. D: real B against the detached translation of A
        fake_b = translated[:len(real_a)]
        real_score, fake_score = d(pools.augment(real_b)), d(pools.augment(fake_b.detach()))
        loss_d = 0.5 * (adversarial_loss(fake_score, False, t.gan_mode) + adversarial_loss(real_score, True, t.gan_mode))
        accelerator.backward(loss_d)
        mark("discriminators")
        norms = {"d": opts.guard.step(opts.d, t.grad_clip)}
        opts.d.zero_grad(set_to_none=True)
        mark("optimizers")

        # 3. G and F against the stepped D, over every micro-batch of the window
        zero = real_a.new_zeros((), dtype=torch.float32)
        terms = [zero, zero, zero]
        if alone:
            terms = generator_pass(accelerator, nets, pools, cfg, step, real_a, real_b, translated, flip)
        else:
            pools.waiting.append((real_a, real_b))
            if accelerator.sync_gradients:
                for index, (a, b) in enumerate(pools.waiting):
                    last = index == len(pools.waiting) - 1
                    with contextlib.ExitStack() as later:
                        if not last:  # their gradients are summed locally; the last backward averages across ranks
                            later.enter_context(accelerator.no_sync(g))
                            later.enter_context(accelerator.no_sync(f))
                        inputs = torch.cat([a, b]) if t.nce_idt else a
                        again = generator_pass(accelerator, nets, pools, cfg, step, a, b,
                                               g(inputs.flip(3) if flip else inputs), flip)
                    terms = [total + new for total, new in zip(terms, again)]
                pools.waiting.clear()
        if accelerator.sync_gradients:
            mark("generators")
            norms["g"] = opts.guard.step(opts.g, t.grad_clip)
            norms["f"] = opts.guard.step(opts.f, t.grad_clip)
            opts.g.zero_grad(set_to_none=True)
            opts.f.zero_grad(set_to_none=True)
        opts.guard.end_step()
        mark("optimizers")

    with torch.no_grad():
        health = CutHealth(accuracy(real_score, True, t.gan_mode), accuracy(fake_score, False, t.gan_mode),
                           change(fake_b, source[:len(real_a)]))
    losses = CutLosses(*(term.detach() for term in terms), loss_d.detach())
    return StepResult(losses, health, norms if accelerator.sync_gradients else None)


def generator_pass(accelerator: Accelerator, nets: Networks, pools: Pools, cfg: RunConfig, step: int,
                   real_a: torch.Tensor, real_b: torch.Tensor, translated: torch.Tensor, flip: bool) -> list[torch.Tensor]:
    """G's loss for one micro-batch against D, frozen (`translated`: G's output for it, with its
    graph), and its backward. Returns the adversarial, NCE and identity NCE terms."""
    t, d, n = cfg.train, nets.d_b, len(real_a)
    set_requires_grad([d], False)
    adv = adversarial_loss(d(pools.augment(translated[:n])), True, t.gan_mode) * t.lambda_gan
    set_requires_grad([d], True)
    nce = patch_nce(nets, cfg, step, 0, real_a, translated[:n], flip)
    nce_idt = patch_nce(nets, cfg, step, 1, real_b, translated[n:], flip) if t.nce_idt else torch.zeros_like(nce)
    accelerator.backward(adv + ((nce + nce_idt) * 0.5 if t.nce_idt else nce))
    return [adv, nce, nce_idt]


def patch_nce(nets: Networks, cfg: RunConfig, step: int, term: int, source: torch.Tensor, translated: torch.Tensor,
              flip: bool) -> torch.Tensor:
    """PatchNCE between `source` and its translation, x train.lambda_nce, averaged over the layers.
    The keys (the source's patches) are targets: computed without a graph."""
    t, layers = cfg.train, tuple(cfg.model.nce_layers)
    queries = nets.g_ab(translated, layers)
    if flip:  # the translation of the mirrored input, mirrored back onto the source
        queries = [q.flip(3) for q in queries]
    with torch.no_grad():
        keys = nets.g_ab(source, layers)
        ids = [patch_ids(cfg.seed, step, term, layer, k.shape[2] * k.shape[3], t.num_patches, k.device)
               for layer, k in enumerate(keys)]
        keys = nets.f(keys, ids)
    total = 0.0
    for query, key in zip(nets.f(queries, ids), keys):
        total = total + patch_nce_loss(query, key, len(source), t.nce_temperature).mean() * t.lambda_nce
    return total / len(layers)
