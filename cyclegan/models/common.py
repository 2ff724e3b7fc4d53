"""Pieces every network shares: the norm choice and the official weight inits."""

from __future__ import annotations

from torch import nn


def make_norm(norm: str, channels: int) -> nn.Module:
    """The official norm layers.

    Instance norm has no affine parameters and no running statistics, so it adds no keys to
    the state_dict; batch norm adds weight, bias and running stats; `none` is an Identity.
    """
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}: use instance, batch or none")


def uses_bias(norm: str) -> bool:
    """The official code gives convolutions a bias only under instance norm."""
    return norm == "instance"


INITS = ("normal", "xavier")


def init_weights(net: nn.Module, gain: float = 0.02, init: str = "normal") -> None:
    """Conv and linear weights ~ N(0, gain) (`normal`: the official CycleGAN init) or Xavier-normal
    with gain `gain` (`xavier`: the official CUT init); biases 0, batch-norm scales ~ N(1, gain)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use {' or '.join(INITS)}")
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init == "normal":
                nn.init.normal_(module.weight, 0.0, gain)
            else:
                nn.init.xavier_normal_(module.weight, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
