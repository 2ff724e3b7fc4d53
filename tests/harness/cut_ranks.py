"""Two CUT (or FastCUT) optimizer steps on four fixed images, split across however many ranks it
is launched on and GRAD_ACCUM micro-batches, in float64; rank 0 saves the weights. For comparing
one rank, two ranks and gradient accumulation on the same images (tests/test_cut.py runs the
one-rank cases in its own process through `two_steps`).

    [accelerate launch] python tests/harness/cut_ranks.py OUT.pt OBJECTIVE GRAD_ACCUM [CONTROL|-] [key=value ...]

CONTROL (`-`: none), for negative controls: `global-reshape` groups patches by the global batch size (CUT
issue #67: wrong negatives on every rank of a DDP run), `ids-per-micro-batch` draws new patch
places for each micro-batch of an accumulation window. Config overrides after it, e.g.
`perf.activation_checkpointing=all`, change the run but not its arithmetic.
"""

import itertools
import sys

import torch
from accelerate import Accelerator

import cyclegan.objectives.cut as cut
from cyclegan.build import build_training
from cyclegan.config import load_config
from cyclegan.objectives import objective_for


def controlled(control: str | None, world: int) -> dict:
    """The replacements a negative control makes in `cyclegan.objectives.cut`."""
    if control == "global-reshape":
        loss = cut.patch_nce_loss
        return {"patch_nce_loss": lambda query, key, images, temperature: loss(query, key, images * world, temperature)}
    if control == "ids-per-micro-batch":
        draws, ids = itertools.count(), cut.patch_ids
        return {"patch_ids": lambda seed, step, *rest: ids(seed, (step, next(draws)), *rest)}
    return {}


def two_steps(accelerator: Accelerator, objective: str, accum: int, overrides: list[str] = ()) -> dict:
    """The networks' weights after two optimizer steps (float64 as the default dtype)."""
    cfg = load_config(None, [f"model.objective={objective}", "model.ngf=4", "model.n_blocks=5", "model.ndf=4",
                             "model.n_layers_d=2", "model.head_nc=16", "train.num_patches=16", "train.adam_eps=1.0",
                             f"train.grad_accum={accum}", *overrides])
    torch.manual_seed(cfg.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_micro = 4 // (world * accum)
    nets, opts, pools = build_training(accelerator, cfg)
    images = {k: torch.rand((4, 3, 32, 32), generator=torch.Generator().manual_seed(seed)) * 2 - 1
              for k, seed in (("A", 1), ("B", 2))}
    for step in range(2):
        for micro in range(accum):
            first = (micro * world + rank) * per_micro  # rank r of micro-batch m: the next per_micro images
            batch = {k: v[first:first + per_micro] for k, v in images.items()}
            objective_for(cfg).train_step(accelerator, nets, opts, pools, batch, cfg, step)
    return {name: accelerator.unwrap_model(net).state_dict() for name, net in nets.named().items()}


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    out, objective, accum = sys.argv[1], sys.argv[2], int(sys.argv[3])
    accelerator = Accelerator(gradient_accumulation_steps=accum)
    control = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    for name, replacement in controlled(control, accelerator.num_processes).items():
        setattr(cut, name, replacement)
    weights = two_steps(accelerator, objective, accum, sys.argv[5:])
    if accelerator.is_main_process:
        torch.save(weights, out)
    accelerator.end_training()
