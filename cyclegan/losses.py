"""The paper's losses as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 network outputs are compared in fp32; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def adversarial_loss(scores: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """LSGAN (mean squared distance to 1 or 0, the paper's choice) or vanilla GAN (BCE on logits)."""
    scores = _at_least_fp32(scores)
    target = torch.full_like(scores, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(scores, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(scores, target)
    raise ValueError(f"unknown gan mode {mode!r}: use lsgan or vanilla")


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its round trip through both generators."""
    return F.l1_loss(_at_least_fp32(reconstructed), _at_least_fp32(real))


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between a target-domain image and the generator's output for it (colour preservation)."""
    return F.l1_loss(_at_least_fp32(same), _at_least_fp32(real))
