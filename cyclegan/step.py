"""What every objective's update is made of: the networks by role, their optimizers, each rank's
own draws, and the step's result. The objectives themselves (`cyclegan.objectives`) are peers: each
is one step function over these pieces, and the trainer does not know which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from cyclegan.diffaug import DiffAugment
from cyclegan.optim import StepGuard
from cyclegan.pool import ImagePool

NETWORK_ORDER = ("g_ab", "g_ba", "d_a", "d_b", "f")


@dataclass
class Networks:
    """The networks by role: `g_ab` translates A -> B and `g_ba` B -> A, `d_a` judges domain A's
    images and `d_b` domain B's, `f` is CUT's patch head. An objective has the ones it trains; the
    others are None (CUT: g_ab, d_b and f)."""

    g_ab: nn.Module
    d_b: nn.Module
    g_ba: nn.Module | None = None
    d_a: nn.Module | None = None
    f: nn.Module | None = None

    def named(self) -> dict[str, nn.Module]:
        """The networks present, in a fixed order (checkpoints, checksums and DDP follow it)."""
        return {name: getattr(self, name) for name in NETWORK_ORDER if getattr(self, name) is not None}

    def generators(self) -> dict[str, nn.Module]:
        return {name: net for name, net in self.named().items() if name.startswith("g_")}


@dataclass
class Optimizers:
    g: torch.optim.Optimizer  # the generator(s)
    d: torch.optim.Optimizer  # the discriminator(s)
    guard: StepGuard  # steps them, or skips them on every rank when their gradients are not finite
    f: torch.optim.Optimizer | None = None  # CUT's patch head, by its own Adam as the official code

    def named(self) -> dict[str, torch.optim.Optimizer]:
        return {name: getattr(self, name) for name in ("g", "d", "f") if getattr(self, name) is not None}


@dataclass
class Pools:
    """What each rank draws on its own: the histories of fakes, and the augmentation's dice."""

    fake_a: ImagePool
    fake_b: ImagePool
    augment: DiffAugment
    # CUT under gradient accumulation: this optimizer step's micro-batches, whose generator pass waits
    # for the discriminator's step (empty between optimizer steps, so never checkpointed)
    waiting: list = field(default_factory=list)


class Stacked:
    """Detached scalar tensors, still on the device: reading them is left to logging steps."""

    def stacked(self) -> torch.Tensor:
        return torch.stack([getattr(self, f.name).float() for f in fields(self)])

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class StepResult:
    losses: Stacked  # the objective's losses (loss/NAME)
    health: Stacked  # how the game goes (health/NAME): discriminator accuracies, generators' change
    grad_norms: dict[str, torch.Tensor] | None  # per optimizer, on optimizer (sync) steps only


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        net.requires_grad_(flag)


def accuracy(scores: torch.Tensor, real: bool, gan_mode: str) -> torch.Tensor:
    """The share of a discriminator's patch scores on the right side: above the cut for real
    images, below it for fakes (LSGAN: 0.5, between its targets 1 and 0; vanilla: the logit 0)."""
    cut = 0.5 if gan_mode == "lsgan" else 0.0
    return ((scores > cut) if real else (scores < cut)).float().mean()


def change(translated: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """How far a generator moves its input, mean |G(x) - x| (a greyscale input set against each
    colour channel; near 0: it collapsed to the identity)."""
    return (translated - source).abs().float().mean()
