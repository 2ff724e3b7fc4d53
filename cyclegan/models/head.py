"""CUT's patch head ("F"): a small MLP per feature layer that maps sampled feature vectors into
the space where PatchNCE compares them, laid out as the official `PatchSampleF` (`mlp_0.0.weight`,
..., so that its `latest_net_F.pth` loads key by key).

The official code creates the MLPs lazily from the first batch's feature shapes; their input
widths follow from the generator's architecture alone (`feature_channels`), so here the head is
built with the other networks, and DDP, checkpoints, resume and warm starts see it from step 0.
"""

from __future__ import annotations

import torch
from torch import nn

from cyclegan.losses import at_least_fp32
from cyclegan.models.common import init_weights
from cyclegan.models.generator import ResnetGenerator

L2_EPS = 1e-7  # added to each vector's norm before dividing, as the official head


def feature_channels(generator: ResnetGenerator, layers: tuple[int, ...]) -> list[int]:
    """The channels of the generator's output at each of `layers` (its input's for a padding)."""
    channels, found = generator.spec.in_channels, []
    for index, module in enumerate(generator.model[:max(layers) + 1]):
        convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if convs:
            channels = convs[-1].out_channels
        if index in layers:
            found.append(channels)
    return found


class PatchHead(nn.Module):
    """Per layer: Linear(C, width), ReLU, Linear(width, width), then L2-normalised."""

    def __init__(self, channels: list[int], width: int = 256, init_gain: float = 0.02, init: str = "xavier") -> None:
        super().__init__()
        for index, c in enumerate(channels):
            setattr(self, f"mlp_{index}", nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width)))
        self.layers = len(channels)
        init_weights(self, init_gain, init)

    def forward(self, features: list[torch.Tensor], ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each layer's feature vectors at the positions `ids` (flat indices into H x W, the same for
        every image), through that layer's MLP: (batch x positions) x width, unit length, in fp32 at
        least (the logits divide by a temperature of 0.07, which would magnify bf16's rounding).

        The positions are gathered from the channels-first layout and only the gathered vectors
        are transposed: a gradient handed back to the generator in a channels-last layout made the
        CPU instance norm's backward wrong at one image per pass (torch 2.14)."""
        out = []
        for index, (feature, where) in enumerate(zip(features, ids)):
            vectors = feature.flatten(2)[:, :, where].transpose(1, 2).flatten(0, 1)
            projected = at_least_fp32(getattr(self, f"mlp_{index}")(vectors))
            out.append(projected / (projected.pow(2).sum(1, keepdim=True).sqrt() + L2_EPS))
        return out
