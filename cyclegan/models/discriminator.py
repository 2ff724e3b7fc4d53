"""The N-layer PatchGAN discriminator; three layers give the paper's 70x70 patches.

Laid out as the official `NLayerDiscriminator` (one `nn.Sequential` named `model`), so
official `latest_net_D_*.pth` files load with `strict=True`. It outputs raw scores, no sigmoid:
the losses decide how to read them.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.models.antialias import Downsample
from cyclegan.models.common import init_weights, make_norm, uses_bias
from cyclegan.models.recompute import Stage, run_stages


class NLayerDiscriminator(nn.Module):
    """`antialias`: the official CUT layout, each strided convolution replaced by a full-size one
    and a blurred subsampling (`Downsample`)."""

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        init_gain: float = 0.02,
        antialias: bool = False,
        init: str = "normal",
    ) -> None:
        super().__init__()
        bias = uses_bias(norm)
        stride = 1 if antialias else 2

        def downsample(channels: int) -> list[nn.Module]:
            return [Downsample(channels)] if antialias else []

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=stride, padding=1),
            nn.LeakyReLU(0.2, True),
            *downsample(ndf),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            last = n == n_layers  # the last feature layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1 if last else stride, padding=1, bias=bias),
                make_norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
                *([] if last else downsample(ndf * mult)),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        self.stages = [Stage(0, len(layers), False)]  # activation checkpointing `all` recomputes it whole
        self.recompute = "none"  # activation checkpointing (cyclegan.models.recompute.LEVELS); training sets it
        init_weights(self, init_gain, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self.model, x, self.stages, self.recompute)
