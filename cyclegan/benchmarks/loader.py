"""The training loader's throughput on photo-like JPEG shards, and what the reduced-scale JPEG
decode (data.jpeg_draft) does to pixels."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cyclegan.config import DataConfig
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, train_loader
from cyclegan.hardware import machine
from cyclegan.images import open_image, to_rgb


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
                      jpeg_draft: bool = False) -> dict:
    """Training-loader images/s (A and B images both counted) at batch 1, median of `repeats`;
    the paper's preprocessing (resize to 286, crop 256)."""
    cfg = DataConfig(root=str(shards), num_workers=workers, jpeg_draft=jpeg_draft)
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


def loader_benchmark(workdir: Path, count: int, workers: list[int], batches: int, repeats: int,
                     image_size: int = 256, jpeg_draft: bool = False) -> dict:
    """Make JPEG shards once (per image size), then time the loader for each worker count."""
    folders, shards = workdir / f"folders-{image_size}", workdir / f"shards-{image_size}"
    if not (shards / "manifest.json").is_file():
        write_photo_like_jpegs(folders, count, image_size)
        write_shards(find_domains(folders, None, None), shards, shard_size=max(1, count // 8))
    results = [loader_throughput(shards, w, batches, 20, repeats, jpeg_draft) for w in workers]
    decode = "reduced-scale (jpeg_draft)" if jpeg_draft else "full"
    report = {
        "what": f"training loader, {image_size}x{image_size} JPEG, {decode} decode -> bicubic resize 286 -> "
                "random crop 256 -> flip -> tensor",
        "machine": machine(),
        "results": results,
    }
    if jpeg_draft:
        report["draft_vs_full_decode_levels"] = draft_difference(sorted((folders / "trainA").glob("*.jpg"))[:50])
    return report


def draft_difference(paths: list[Path], load_size: int = 286) -> dict:
    """How far the reduced-scale decode moves pixels after the resize to `load_size`, in levels of 255."""
    diffs = []
    for path in paths:
        data = path.read_bytes()
        full, draft = (np.asarray(to_rgb(open_image(data, draft=d))[0].resize((load_size, load_size), Image.BICUBIC),
                                  dtype=np.int16) for d in (None, (load_size, load_size)))
        diffs.append(np.abs(full - draft))
    every = np.stack(diffs)
    return {"mean": float(every.mean()), "max": int(every.max()), "images": len(paths)}
