"""Exponential moving averages of the two generators' weights, kept in fp32.

Averaged generator weights are standard in modern GANs (StarGAN v2 reports clearly better
translations with them): they smooth out the oscillation of adversarial training. After every
optimizer step each averaged parameter moves towards the trained one, `ema <- decay * ema +
(1 - decay) * weight`, starting from the initial weights; buffers (batch-norm statistics) are
copied. Under DDP every rank holds the same weights, so every rank computes the same average
without talking to the others. Sample grids, in-training evaluation and exports use the
averaged generators (`train.export_ema=false` exports the trained weights instead).
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
        for name, net in nets.items():
            copy = ResnetGenerator(net.spec).to(device)
            copy.load_state_dict(net.state_dict())
            self.models[name] = copy.float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, nets: dict[str, nn.Module]) -> None:
        for name, net in nets.items():
            averaged, trained = self.models[name], net
            params = [p.detach().float() for p in trained.parameters()]
            torch._foreach_lerp_(list(averaged.parameters()), params, 1.0 - self.decay)
            for mine, theirs in zip(averaged.buffers(), trained.buffers()):
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: model.state_dict() for name, model in self.models.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, model in self.models.items():
            model.load_state_dict(state[name])
