"""The one place where metrics and images leave the training loop.

The main process appends scalars to `metrics.jsonl` and saves sample grids as PNGs under
`samples/`. Other ranks only take part in the reductions that produce the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from einops import rearrange
from PIL import Image

from cyclegan.images import to_uint8


def image_grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Columns of [-1, 1] NCHW images (e.g. real | fake | rec) -> one uint8 HWC grid, a row per image."""
    stacked = to_uint8(torch.stack([c.detach().float().cpu() for c in columns]))
    return rearrange(stacked, "k n c h w -> (n h) (k w) c").numpy()


class RunLog:
    """Writes `metrics.jsonl` and `samples/*.png` in the run folder, from the main process only."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, resume_step: int | None) -> None:
        self.accelerator = accelerator
        self.metrics = output_dir / "metrics.jsonl"
        self.samples = output_dir / "samples"
        if accelerator.is_main_process:
            self.samples.mkdir(parents=True, exist_ok=True)
            self._drop_rows_after(resume_step or 0)

    def _drop_rows_after(self, step: int) -> None:
        """A resumed run logs the steps after its checkpoint again: drop the old copies first."""
        if not self.metrics.exists():
            return
        rows = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
        self.metrics.write_text("".join(line + "\n" for line in kept))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.accelerator.is_main_process:
            with self.metrics.open("a") as out:
                out.write(json.dumps({"step": step, **values}) + "\n")

    def images(self, step: int, grids: dict[str, np.ndarray]) -> None:
        if self.accelerator.is_main_process:
            for name, grid in grids.items():
                Image.fromarray(grid).save(self.samples / f"step_{step:07d}_{name}.png")
