"""A process's random number generators, saved with each checkpoint (in its rank's `rank_R.pt`)
and restored on resume, so that a resumed run draws what the uninterrupted one would have."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: CPU, Python, NumPy, and its own GPU's only, so that a resume on a
    node with fewer GPUs (an elastic requeue) restores it without indexing GPUs it no longer has."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict, device: torch.device) -> None:
    """Undo `rng_state` on this process's device. Older checkpoints hold a list of every GPU the
    process saw: their entry for this device is used where it exists; where it does not (the
    checkpoint's node had fewer GPUs), this GPU's generator goes on as seeded, with a warning."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    saved = state.get("cuda")
    if saved is None or device.type != "cuda":
        return
    if isinstance(saved, list):
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(saved):
            log.warning("the checkpoint holds the RNG states of %d GPU(s), none for cuda:%d: its random draws "
                        "start afresh, and the resumed run is not bitwise the uninterrupted one", len(saved), index)
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, device)
