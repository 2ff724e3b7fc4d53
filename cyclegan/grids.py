"""The sample grids a run shows as it trains: the same few test images of each domain, through
the generators, at every `tracking.image_every` steps."""

from __future__ import annotations

import numpy as np
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
def sample_grids(accelerator: Accelerator, g_ab: torch.nn.Module, g_ba: torch.nn.Module | None,
                 images: tuple[torch.Tensor, torch.Tensor], bands: list[int] | None = None
                 ) -> dict[str, tuple[np.ndarray, str]]:
    """Grids of fixed test images of each domain, each with its caption (its columns). With both
    generators: real | translated | reconstructed | identity (where both domains have the same
    channels), each way. With g_ab alone (CUT): real A | translated, and real B | identity output."""
    real_a, real_b = (x.to(accelerator.device) for x in images)
    nets = [net for net in (g_ab, g_ba) if net is not None]
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()  # dropout off, batch norm on its running statistics
    same = real_a.shape[1] == real_b.shape[1]
    try:
        with accelerator.autocast():
            fake_b = g_ab(real_a)
            if g_ba is None:
                grids = {"AtoB": ([real_a, fake_b], "real A | G(A)")}
                if same:
                    grids["identity"] = ([real_b, g_ab(real_b)], "real B | identity G(B)")
            else:
                fake_a = g_ba(real_b)
                grids = {
                    "AtoB": ([real_a, fake_b, g_ba(fake_b), *([g_ba(real_a)] if same else [])],
                             "real A | G_AB(A) | G_BA(G_AB(A))" + (" | identity G_BA(A)" if same else "")),
                    "BtoA": ([real_b, fake_a, g_ab(fake_a), *([g_ab(real_b)] if same else [])],
                             "real B | G_BA(B) | G_AB(G_BA(B))" + (" | identity G_AB(B)" if same else "")),
                }
            return {name: (image_grid(columns, bands), caption) for name, (columns, caption) in grids.items()}
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)
