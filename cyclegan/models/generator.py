"""The ResNet generator of the paper, laid out exactly as the official implementation.

Every layer sits in one `nn.Sequential` called `model`, in the official order, so that the
state_dict keys (`model.1.weight`, `model.10.conv_block.1.weight`, ...) and shapes match the
released checkpoints and `load_state_dict(strict=True)` takes them unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cyclegan.models.common import init_weights, make_norm, uses_bias


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator; saved as JSON beside exported weights."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class ReflectionPad2d(nn.ReflectionPad2d):
    """Reflection padding in the input's own type, in eager mode.

    CPU autocast (alone among the devices) runs reflection padding in fp32, so under bf16 every
    padding would upcast its activations and hand the convolution after it an fp32 input to
    cast back, both ways, at each of a generator's 20 paddings (5 % of an eager bf16 step at
    256 px). Padding only copies values: in bf16 the convolution gets the same input, bit for
    bit; the backward sums a border pixel's mirrored gradients in bf16 rather than fp32, which
    moves corner pixels by bf16's rounding. A compiled graph keeps autocast's way, whose casts
    Inductor fuses (padding in bf16 there took 17 % more time per step). No parameters, so the
    official state_dict keys stay.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x)


class ResnetBlock(nn.Module):
    """pad, conv3x3, norm, ReLU, [dropout], pad, conv3x3, norm; added to the input, no ReLU after."""

    def __init__(self, dim: int, norm: str, dropout: bool) -> None:
        super().__init__()
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=bias),
            make_norm(norm, dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, bias=bias), make_norm(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, n residual blocks, two upsamplings, c7s1-3, tanh."""

    def __init__(self, spec: GeneratorSpec = GeneratorSpec(), init_gain: float = 0.02) -> None:
        super().__init__()
        self.spec = spec
        ngf, norm, bias = spec.ngf, spec.norm, uses_bias(spec.norm)
        layers: list[nn.Module] = [
            ReflectionPad2d(3),
            nn.Conv2d(spec.in_channels, ngf, kernel_size=7, bias=bias),
            make_norm(norm, ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(norm, ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4, norm, spec.dropout) for _ in range(spec.n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                make_norm(norm, ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [ReflectionPad2d(3), nn.Conv2d(ngf, spec.out_channels, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
