"""The one place where metrics and images leave the training loop.

The main process appends scalars to `metrics.jsonl`, saves sample grids as PNGs under
`samples/`, and sends both to Weights & Biases (offline by default: `wandb sync` later) or
TensorBoard through Accelerate's tracker API. Other ranks only take part in the reductions
that produce the numbers, and never wait on a tracker.
"""

from __future__ import annotations

import functools
import platform
import secrets
import string
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from einops import rearrange
from PIL import Image

from cyclegan.config import RunConfig, TrackingConfig
from cyclegan.images import to_uint8
from cyclegan.io.files import atomic_path
from cyclegan.io.files import writing as _writing
from cyclegan.io.records import append_jsonl, read_jsonl, write_jsonl

PACKAGES = ("torch", "torchvision", "accelerate", "wandb", "webdataset", "einops", "tensorboard")

# a failed write of the run's files ends in one line, saying how to go on
writing = functools.partial(_writing, then="then run again with resume=auto")


def tracker_name(cfg: TrackingConfig) -> str | None:
    """What to pass to `Accelerator(log_with=...)`."""
    return None if cfg.mode == "disabled" else cfg.backend


def new_run_id() -> str:
    """A W&B-style run id (8 lowercase letters and digits), kept with the checkpoints."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def display_uint8(images: torch.Tensor, bands: list[int] | None = None) -> torch.Tensor:
    """[-1, 1] NCHW images -> uint8 N x 3 x H x W for display. Greyscale shows as grey and RGB as
    it is (the official cast); other band counts show `bands` (default: the first three, or the
    first alone for two), each stretched to its own range over the batch, for display only."""
    images = images.detach().float().cpu()
    channels = images.shape[1]
    if channels not in (1, 3):
        picked = images[:, bands or list(range(3 if channels >= 3 else 1))]
        low = picked.amin(dim=(0, 2, 3), keepdim=True)
        high = picked.amax(dim=(0, 2, 3), keepdim=True)
        images = (picked - low) / (high - low).clamp_min(1e-12) * 2 - 1
    return to_uint8(images).expand(-1, 3, -1, -1)


def image_grid(columns: list[torch.Tensor], bands: list[int] | None = None) -> np.ndarray:
    """Columns of [-1, 1] NCHW images (e.g. real | fake | rec) -> one uint8 HWC RGB grid, a row per
    image; greyscale and multi-band columns are shown as `display_uint8` does, beside colour ones.

    Converted to uint8 here: W&B casts floats to uint8 without rescaling (black images).
    """
    stacked = torch.stack([display_uint8(c, bands) for c in columns])
    return rearrange(stacked, "k n c h w -> (n h) (k w) c").numpy()


def describe_run(cfg: RunConfig, world_size: int, global_batch: int, images: dict[str, int]) -> dict:
    """The tracker's run config (also OUTPUT/run.json): the resolved config, the images per split and
    domain, and what makes a run reproducible."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {**cfg.to_dict(), "git_commit": commit, "world_size": world_size, "global_batch": global_batch,
            "images": images, "versions": versions}


class RunLog:
    """Writes `metrics.jsonl` and `samples/*.png` and feeds the tracker, from the main process only."""

    def __init__(self, accelerator: Accelerator, cfg: RunConfig, resume_step: int, run_id: str | None,
                 run_config: dict) -> None:
        self.accelerator, self.cfg = accelerator, cfg.tracking
        output = Path(cfg.output_dir)
        self.metrics = output / "metrics.jsonl"
        self.samples = output / "samples"
        self.run_id = run_id
        if not accelerator.is_main_process:
            return
        self.samples.mkdir(parents=True, exist_ok=True)
        self._drop_rows_after(resume_step)
        if tracker_name(self.cfg) == "wandb":
            kwargs = {"dir": str(output), "mode": self.cfg.mode, "id": run_id, "resume": "allow",
                      "entity": self.cfg.entity, "name": self.cfg.run_name, "tags": list(self.cfg.tags),
                      "group": self.cfg.group}
            accelerator.init_trackers(self.cfg.project, config=run_config, init_kwargs={"wandb": kwargs})
        elif tracker_name(self.cfg) == "tensorboard":
            accelerator.init_trackers(self.cfg.project, config=_flatten(run_config))

    def _drop_rows_after(self, step: int) -> None:
        """A resumed run logs the steps after its checkpoint again: drop the old copies first."""
        if not self.metrics.exists():
            return
        with writing(self.metrics):
            write_jsonl(self.metrics, [row for row in read_jsonl(self.metrics) if row.get("step", 0) <= step])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with writing(self.metrics):
            append_jsonl(self.metrics, {"step": step, **values})
        if tracker_name(self.cfg):
            self.accelerator.log(values, step=step)

    def images(self, step: int, grids: dict[str, tuple[np.ndarray, str]]) -> None:
        """Sample grids (`sample_grids`: name -> pixels and caption) as PNGs and to the tracker."""
        if not self.accelerator.is_main_process:
            return
        for name, (grid, _) in grids.items():
            path = self.samples / f"step_{step:07d}_{name}.png"
            with writing(path), atomic_path(path) as temporary:
                Image.fromarray(grid).save(temporary, format="PNG")
        backend = tracker_name(self.cfg)
        if backend == "wandb":
            import wandb

            images = {f"samples/{n}": wandb.Image(g, caption=caption) for n, (g, caption) in grids.items()}
            self.accelerator.get_tracker("wandb").log(images, step=step)
        elif backend == "tensorboard":
            tracker = self.accelerator.get_tracker("tensorboard")
            tracker.log_images({f"samples/{n}": g for n, (g, _) in grids.items()}, step=step, dataformats="HWC")

    def summary(self, values: dict[str, float]) -> None:
        """Final metrics go to the W&B run summary (metrics.jsonl already has them as its last row)."""
        if self.accelerator.is_main_process and tracker_name(self.cfg) == "wandb":
            self.accelerator.get_tracker("wandb", unwrap=True).summary.update(values)


def _flatten(values: dict, prefix: str = "") -> dict:
    """TensorBoard's hparams take flat scalars and strings only."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
