"""Anti-aliased resampling (Zhang 2019, "Making convolutional networks shift-invariant again"), laid
out as the official CUT networks build it, so that CUT's checkpoints load key by key.

A strided convolution samples every second pixel and aliases; the official CUT generator and
discriminator instead convolve at full resolution and then blur before subsampling (`Downsample`),
and upsample by a transposed blur (`Upsample`) before a plain convolution. Each holds its fixed
filter as the `filt` buffer (in the state_dict, as the official files have it), one copy per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BINOMIAL = {3: (1.0, 2.0, 1.0), 4: (1.0, 3.0, 3.0, 1.0)}


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial filter of `size` taps (sums to 1)."""
    row = torch.tensor(BINOMIAL[size])
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class Downsample(nn.Module):
    """Reflection pad 1, 3x3 binomial blur, stride 2: halves the size, rounding up."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Replicate pad 1, transposed 4x4 binomial blur (x4, keeping the mean), stride 2; cropped to
    exactly twice the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(padded, self.filt.to(x.dtype), stride=2, padding=2, groups=x.shape[1])
        return y[:, :, 1:-1, 1:-1]
