"""The sample grids a run shows as it trains: the same few test images of each domain, through
the generators, at every `tracking.image_every` steps."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from cyclegan.config import RunConfig
from cyclegan.data.sources import DataSources
from cyclegan.evaluation import load_test_split
from cyclegan.tracking import image_grid


def fixed_test_images(sources: DataSources, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The first test images of each domain, shown in every sample grid."""
    n = cfg.tracking.num_images
    if not (sources.test_a and sources.test_b) or n == 0:
        return None
    split = load_test_split(sources, cfg.data.crop_size, limit=n, channels=(cfg.model.input_nc, cfg.model.output_nc),
                            normalizations=cfg.data.normalizations)
    return (torch.stack(split.images_a), torch.stack(split.images_b)) if split.images_a and split.images_b else None


@torch.no_grad()
def sample_grids(accelerator: Accelerator, g_ab: torch.nn.Module, g_ba: torch.nn.Module,
                 images: tuple[torch.Tensor, torch.Tensor], bands: list[int] | None = None) -> dict:
    """real | translated | reconstructed | identity (where both domains have the same channels),
    for fixed test images of each domain."""
    real_a, real_b = (x.to(accelerator.device) for x in images)
    modes = g_ab.training, g_ba.training
    g_ab.eval(), g_ba.eval()  # dropout off, batch norm on its running statistics
    try:
        with accelerator.autocast():
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            same = real_a.shape[1] == real_b.shape[1]
            return {
                "AtoB": image_grid([real_a, fake_b, g_ba(fake_b), *([g_ba(real_a)] if same else [])], bands),
                "BtoA": image_grid([real_b, fake_a, g_ab(fake_a), *([g_ab(real_b)] if same else [])], bands),
            }
    finally:
        g_ab.train(modes[0]), g_ba.train(modes[1])
