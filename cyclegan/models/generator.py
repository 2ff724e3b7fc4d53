"""The ResNet generator of the paper, laid out exactly as the official implementation.

Every layer sits in one `nn.Sequential` called `model`, in the official order, so that the
state_dict keys (`model.1.weight`, `model.10.conv_block.1.weight`, ...) and shapes match the
released checkpoints and `load_state_dict(strict=True)` takes them unchanged. With `antialias` the
layout is the official CUT generator's instead (blurred down- and upsampling, `model.antialias`),
whose checkpoints load the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cyclegan.models.antialias import Downsample, Upsample
from cyclegan.models.common import init_weights, make_norm, uses_bias
from cyclegan.models.recompute import Stage, run_stages


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything needed to rebuild a generator; saved as JSON beside exported weights."""

    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False
    antialias: bool = False  # the official CUT layout: blurred down- and upsampling

    @property
    def depth(self) -> int:
        """The number of modules in `model`: the stem, two downsamplings, the blocks, two
        upsamplings, the output convolution."""
        resample = 4 if self.antialias else 3
        return 4 + 2 * resample + self.n_blocks + 2 * resample + 3

    @property
    def stages(self) -> list[Stage]:
        """`model` in the parts activation checkpointing recomputes as one: the encoder (the stem and
        both downsamplings), each residual block, the decoder (both upsamplings and the output
        convolution). Recomputing the encoder whole keeps only its input, not the full-size
        activations between its layers."""
        first, last = 4 + 2 * (4 if self.antialias else 3), 4 + 2 * (4 if self.antialias else 3) + self.n_blocks
        return [Stage(0, first, False), *(Stage(i, i + 1, True) for i in range(first, last)), Stage(last, self.depth, False)]

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """The layers CUT's PatchNCE reads by default: the padded input, the two downsampling
        convolutions' outputs, residual blocks 1 and 5 (positions in `model`; the last block where
        there are fewer than 5)."""
        first = 12 if self.antialias else 10
        blocks = sorted({first, first + min(self.n_blocks, 5) - 1}) if self.n_blocks else []
        return (0, 4, 8, *blocks) if self.antialias else (0, 4, 7, *blocks)

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

    def __init__(self, spec: GeneratorSpec = GeneratorSpec(), init_gain: float = 0.02, init: str = "normal") -> None:
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
            stride = 1 if spec.antialias else 2  # anti-aliased: convolve at full size, then blur and subsample
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=stride, padding=1, bias=bias),
                make_norm(norm, ngf * mult * 2),
                nn.ReLU(True),
                *([Downsample(ngf * mult * 2)] if spec.antialias else []),
            ]
        layers += [ResnetBlock(ngf * 4, norm, spec.dropout) for _ in range(spec.n_blocks)]
        for mult in (4, 2):
            if spec.antialias:  # blur up, then a plain convolution
                layers += [Upsample(ngf * mult), nn.Conv2d(ngf * mult, ngf * mult // 2, kernel_size=3, padding=1, bias=bias)]
            else:
                layers.append(nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1,
                                                 output_padding=1, bias=bias))
            layers += [make_norm(norm, ngf * mult // 2), nn.ReLU(True)]
        layers += [ReflectionPad2d(3), nn.Conv2d(ngf, spec.out_channels, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.stages = spec.stages
        self.recompute = "none"  # activation checkpointing (cyclegan.models.recompute.LEVELS); training sets it
        init_weights(self, init_gain, init)

    def forward(self, x: torch.Tensor, layers: tuple[int, ...] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The translation; or, given `layers` (positions in `model`, ascending), the outputs of
        those layers, running the network no further than the last of them (CUT's features)."""
        return run_stages(self.model, x, self.stages, self.recompute, tuple(layers or ()))
