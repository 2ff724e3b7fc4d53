"""Exponential moving averages of the two generators' weights, kept in fp32.

Averaged generator weights are standard in modern GANs (StarGAN v2 reports clearly better
translations with them): they smooth out the oscillation of adversarial training. After every
optimizer step t (from 1) each averaged parameter moves towards the trained one,
`ema <- d_t * ema + (1 - d_t) * weight` with `d_t = min(decay, (1 + t) / (10 + t))`, starting
from the initial weights: the warm-up keeps the average from clinging to the random initial
weights in a run's first thousands of steps (0.999 would otherwise still weigh them by 0.67
after 400 steps). Buffers (batch-norm statistics) are copied. Skipped (non-finite) steps leave
the weights as they were, and the average moves towards those. Under DDP every rank holds the
same weights, so every rank computes the same average without talking to the others. Sample
grids, in-training evaluation and exports use the averaged generators (`train.export_ema=false`
exports the trained weights instead).
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.models import ResnetGenerator

GENERATORS = ("g_ab", "g_ba")


class GeneratorEMA:
    """fp32 copies of `g_ab` and `g_ba`, averaged after each optimizer step."""

    def __init__(self, nets: dict[str, ResnetGenerator], decay: float, device: torch.device) -> None:
        self.decay = decay
        self.models = {}
        with torch.random.fork_rng(devices=[]):  # the copy's own init must not move the run's RNG
            for name, net in nets.items():
                copy = ResnetGenerator(net.spec).to(device)
                copy.load_state_dict(net.state_dict())
                self.models[name] = copy.float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, nets: dict[str, nn.Module], step: int) -> None:
        """After optimizer step `step` (from 1)."""
        decay = self.decay_at(step)
        for name, net in nets.items():
            averaged, trained = self.models[name], net
            params = [p.detach().float() for p in trained.parameters()]
            torch._foreach_lerp_(list(averaged.parameters()), params, 1.0 - decay)
            for mine, theirs in zip(averaged.buffers(), trained.buffers()):
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: model.state_dict() for name, model in self.models.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state[name])
