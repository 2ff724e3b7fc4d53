"""Measurements behind docs/benchmarks.md. Timings live here, never in tests."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.config import DataConfig
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.stream import UnpairedStream, find_sources, train_loader


def write_photo_like_jpegs(root: Path, count: int, size: int = 256, seed: int = 0) -> Path:
    """trainA/ and trainB/ of JPEGs that compress like photos (smooth shapes plus grain)."""
    rng = np.random.default_rng(seed)
    for domain in "AB":
        folder = root / f"train{domain}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
            grain = rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
            pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def loader_throughput(shards: Path, workers: int, batches: int, warmup: int, repeats: int,
                      load_size: int = 286, crop_size: int = 256) -> dict:
    """Training-loader images/s (A and B images both counted) at batch 1, median of `repeats`."""
    cfg = DataConfig(root=str(shards), load_size=load_size, crop_size=crop_size, num_workers=workers)
    stream = UnpairedStream(find_sources(cfg), cfg, batch_size=1, batches_per_epoch=warmup + batches, seed=0)
    rates = []
    for repeat in range(repeats):
        stream.set_epoch(repeat)
        iterator = iter(train_loader(stream))
        for _ in range(warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(2 * batches / (time.perf_counter() - start))
    return {"workers": workers, "images_per_s": statistics.median(rates), "runs": rates}


def loader_benchmark(workdir: Path, count: int, workers: list[int], batches: int, repeats: int) -> dict:
    """Make JPEG shards once, then time the loader for each worker count."""
    shards = workdir / "shards"
    if not (shards / "manifest.json").is_file():
        write_photo_like_jpegs(workdir / "folders", count)
        write_shards(find_domains(workdir / "folders", None, None), shards, shard_size=max(1, count // 8))
    results = [loader_throughput(shards, w, batches, warmup=20, repeats=repeats) for w in workers]
    return {
        "what": "training loader, 256x256 JPEG -> bicubic resize 286 -> random crop 256 -> flip -> tensor",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "results": results,
    }
