"""How long a resumed training stream takes to give its first batch, by position in the epoch:
a lane seeks to its shard and offset instead of decoding every sample the epoch already used."""

from __future__ import annotations

import io
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cyclegan.config import DataConfig
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, train_loader
from cyclegan.errors import UserError
from cyclegan.hardware import machine
from cyclegan.io.files import atomic_path

SHARD_SIZE = 1000


def write_small_shards(folder: Path, images: int, side: int = 32) -> tuple[str, str]:
    """Local tar shards of `images` small PNGs per domain (256 distinct ones, repeated)."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(256):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="PNG")
        encoded.append(out.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for domain in "AB":
        shards = -(-images // SHARD_SIZE)
        for shard in range(shards):
            path = folder / f"{domain}-{shard:06d}.tar"
            if not path.is_file():  # reused by the next run: so written whole or not at all
                with atomic_path(path) as partial, tarfile.open(partial, "w") as tar:
                    for i in range(shard * SHARD_SIZE, min(images, (shard + 1) * SHARD_SIZE)):
                        info = tarfile.TarInfo(f"{domain}_{i:07d}.png")
                        info.size = len(encoded[i % 256])
                        tar.addfile(info, io.BytesIO(encoded[i % 256]))
        specs.append(str(folder / f"{domain}-{{000000..{shards - 1:06d}}}.tar"))
    return specs[0], specs[1]


def first_batch_seconds(stream: UnpairedStream, epoch: int, skip: int) -> float:
    """From `set_epoch` to the first batch in hand, in the training process (no loader workers)."""
    start = time.perf_counter()
    stream.set_epoch(epoch, skip)
    next(iter(train_loader(stream)))
    return time.perf_counter() - start


def resume_benchmark(workdir: Path, images: int, positions: list[int], repeats: int) -> dict:
    """Time to the first batch at each epoch position (samples, batch 1, one rank, one lane),
    median of `repeats`; and, for scale, the time to draw as many samples as the largest position,
    which a resume that replays the epoch would spend decoding."""
    outside = [position for position in positions if not 0 <= position < images]
    if outside:
        raise UserError(f"--positions {outside[0]} lies outside the epoch: give positions from 0 to {images - 1} "
                        "(--images - 1)")
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir} is a file, not a folder")
    train_a, train_b = write_small_shards(workdir, images)
    cfg = DataConfig(train_a=train_a, train_b=train_b, load_size=32, crop_size=32, num_workers=0)
    stream = UnpairedStream(find_sources(cfg), cfg, batch_size=1, batches_per_epoch=images, seed=0)
    results = [{"position": position,
                "first_batch_s": statistics.median(first_batch_seconds(stream, 1 + r, position) for r in range(repeats))}
               for position in positions]
    stream.set_epoch(0)
    start, batches = time.perf_counter(), iter(train_loader(stream))
    for _ in range(max(positions)):
        next(batches)
    return {
        "what": f"resumed training stream, 32x32 PNG, {images} per domain in local shards of {SHARD_SIZE}, "
                f"shuffle buffer {cfg.shuffle_buffer}: seconds from set_epoch to the first batch",
        "machine": machine(),
        "results": results,
        "replay_s": {"samples": max(positions), "seconds": time.perf_counter() - start},
    }
