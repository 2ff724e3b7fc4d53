"""Activation checkpointing: trade compute for memory by keeping only each stage's input in the
forward pass and running the stage again in the backward pass (`torch.utils.checkpoint`, the
non-reentrant kind, which works under DDP, autocast and `torch.compile`).

A network runs its `model` (the official `nn.Sequential`, so the state_dict keys stay the
official ones) stage by stage: a stage is a range of positions in it, marked as a residual block
or not. `blocks` recomputes the residual blocks, `all` every stage. The recomputation replays the
forward's RNG state (dropout draws the same masks) and autocast state, so gradients, weights and
the RNG stream after the step are those of the plain forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

LEVELS = ("none", "blocks", "all")


class Stage(NamedTuple):
    start: int  # first position in `model`
    stop: int  # one past the last
    block: bool  # a residual block (recomputed at level `blocks` too)


def recomputed(stage: Stage, level: str) -> bool:
    return level == "all" or (level == "blocks" and stage.block)


def _run(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


def run_stages(model: nn.Sequential, x: torch.Tensor, stages: list[Stage], level: str,
               taps: tuple[int, ...] = ()) -> torch.Tensor | list[torch.Tensor]:
    """`model` on `x`, the stages that `level` names recomputed in the backward pass (none without
    gradients: evaluation and EMA pay nothing). Given `taps` (ascending positions), the outputs
    of those positions instead, running no further than the last; a stage is cut after each tap,
    so that the tapped tensor is a stage's output."""
    level = level if torch.is_grad_enabled() else "none"
    end = taps[-1] + 1 if taps else len(model)
    features = []
    for stage in stages:
        cuts = [t + 1 for t in taps if stage.start <= t < stage.stop - 1]
        for start, stop in zip([stage.start, *cuts], [*cuts, stage.stop]):
            if start >= end:
                return features
            modules = [model[i] for i in range(start, min(stop, end))]
            x = (checkpoint(_run, modules, x, use_reentrant=False) if recomputed(stage, level)
                 else _run(modules, x))
            if stop - 1 in taps:
                features.append(x)
    return features if taps else x
