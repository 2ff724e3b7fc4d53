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
    """A range of positions in a network's `model` that is recomputed as one."""

    start: int  # first position in `model`
    stop: int  # one past the last
    block: bool  # a residual block (recomputed at level `blocks` too)


def recomputed(stage: Stage, level: str) -> bool:
    """Whether `level` recomputes `stage`: `all` every stage, `blocks` the residual blocks."""
    return level == "all" or (level == "blocks" and stage.block)


def _run(model: nn.Sequential, positions: range, tapped: tuple[int, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The modules at `positions` on `x`: the outputs at `tapped` positions, then the last output.
    A tapped output stays the tensor the next module receives, so an in-place ReLU after a tap
    changes the feature as it did in the plain loop."""
    found = []
    for i in positions:
        x = model[i](x)
        if i in tapped:
            found.append(x)
    return (*found, x)


def run_stages(model: nn.Sequential, x: torch.Tensor, stages: list[Stage], level: str,
               taps: tuple[int, ...] = ()) -> torch.Tensor | list[torch.Tensor]:
    """`model` on `x`, the stages that `level` names recomputed in the backward pass (none without
    gradients: evaluation and EMA pay nothing). Given `taps` (ascending positions), the outputs
    of those positions instead, running no further than the last; a recomputed stage returns its
    tapped outputs with its last, from one recomputation."""
    level = level if torch.is_grad_enabled() else "none"
    end = taps[-1] + 1 if taps else len(model)
    features: list[torch.Tensor] = []
    for stage in stages:
        if stage.start >= end:
            break
        positions = range(stage.start, min(stage.stop, end))
        tapped = tuple(i for i in positions if i in taps)
        if recomputed(stage, level):
            *found, x = checkpoint(_run, model, positions, tapped, x, use_reentrant=False)
        else:
            *found, x = _run(model, positions, tapped, x)
        features += found
    return features if taps else x
