"""Anti-aliased resampling (Zhang 2019, "Making convolutional networks shift-invariant again"), laid
out as the official CUT networks build it, so that CUT's checkpoints load key by key.

A strided convolution samples every second pixel and aliases; the official CUT generator and
discriminator instead convolve at full resolution and then blur before subsampling (`Downsample`),
and upsample by a transposed blur (`Upsample`) before a plain convolution. Each holds its fixed
filter as the `filt` buffer (in the state_dict, as the official files have it), one copy per channel.
Each also describes itself as the fixed depthwise convolution it computes (`as_convolution`), for
code that computes it in pieces (tiled translation): the geometry is stated here alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

BINOMIAL = {3: (1.0, 2.0, 1.0), 4: (1.0, 3.0, 3.0, 1.0)}


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial filter of `size` taps (sums to 1)."""
    row = torch.tensor(BINOMIAL[size])
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class Downsample(nn.Module):
    """Reflection pad 1, 3x3 binomial blur, stride 2: halves the size, rounding up."""

    PAD, MODE, STRIDE = 1, "reflect", 2

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (self.PAD,) * 4, mode=self.MODE)
        return F.conv2d(padded, self.filt.to(x.dtype), stride=self.STRIDE, groups=x.shape[1])

    def as_convolution(self) -> tuple[nn.Conv2d, tuple[int, str]]:
        """The blur as a convolution holding `filt`, and the padding (pixels, mode) of its input."""
        return fixed_convolution(nn.Conv2d, self.filt, stride=self.STRIDE), (self.PAD, self.MODE)


class Upsample(nn.Module):
    """Replicate pad 1, transposed 4x4 binomial blur (x4, keeping the mean), stride 2; cropped to
    exactly twice the size."""

    PAD, MODE, STRIDE, PADDING, CROP = 1, "replicate", 2, 2, 1

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (self.PAD,) * 4, mode=self.MODE)
        y = F.conv_transpose2d(padded, self.filt.to(x.dtype), stride=self.STRIDE, padding=self.PADDING,
                               groups=x.shape[1])
        return y[:, :, self.CROP:-self.CROP, self.CROP:-self.CROP]

    def as_convolution(self) -> tuple[nn.ConvTranspose2d, tuple[int, str]]:
        """The transposed blur on the unpadded input, and the mode its reads past the border take.
        The pad shifts the output by STRIDE x PAD pixels, so padding and crop together become the
        convolution's own padding, PADDING + CROP - STRIDE x PAD (1). With the 4-tap filter that
        padding reads one input pixel past each border, the one the pad of PAD (1) pixel, in MODE,
        supplies: the caller pads in MODE as far as the convolution reads."""
        padding = self.PADDING + self.CROP - self.STRIDE * self.PAD
        return fixed_convolution(nn.ConvTranspose2d, self.filt, stride=self.STRIDE, padding=padding), (0, self.MODE)


def fixed_convolution(kind: type[nn.Conv2d] | type[nn.ConvTranspose2d], filt: torch.Tensor,
                      **geometry: int) -> nn.Conv2d | nn.ConvTranspose2d:
    """A depthwise convolution (or transposed one) whose weight is `filt`, without bias."""
    channels, _, size, _ = filt.shape
    conv = skip_init(kind, channels, channels, size, groups=channels, bias=False, device=filt.device, **geometry)
    with torch.no_grad():
        conv.weight.copy_(filt)
    return conv
