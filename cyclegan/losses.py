"""The paper's losses as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 network outputs are compared in fp32; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def adversarial_loss(scores: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """LSGAN (mean squared distance to 1 or 0, the paper's choice) or vanilla GAN (BCE on logits)."""
    scores = at_least_fp32(scores)
    target = torch.full_like(scores, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(scores, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(scores, target)
    raise ValueError(f"unknown gan mode {mode!r}: use lsgan or vanilla")


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its round trip through both generators."""
    return F.l1_loss(at_least_fp32(reconstructed), at_least_fp32(real))


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between a target-domain image and the generator's output for it (colour preservation)."""
    return F.l1_loss(at_least_fp32(same), at_least_fp32(real))


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, images: int, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE (CUT): each query patch must pick its own key patch out of the keys of the same
    image's other sampled patches. `query` and `key` are (images x patches) x dim, unit vectors,
    image-major; the keys are detached (they are targets). Returns the loss of every query patch.

    Negatives come from the query's own image only, so the loss of an image does not depend on
    what else is in the batch: the same on one rank or many, with or without accumulation.
    """
    query, key = at_least_fp32(query), at_least_fp32(key).detach()
    positive = (query * key).sum(1, keepdim=True)
    q, k = query.view(images, -1, query.shape[1]), key.view(images, -1, key.shape[1])
    patches = q.shape[1]
    negatives = torch.bmm(q, k.transpose(1, 2))
    negatives = negatives.masked_fill(torch.eye(patches, dtype=torch.bool, device=q.device)[None], -10.0)
    logits = torch.cat([positive, negatives.view(-1, patches)], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=q.device), reduction="none")
