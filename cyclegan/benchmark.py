"""Measurements behind docs/benchmarks.md. Timings live here, never in tests."""

from __future__ import annotations

import itertools
import platform
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from cyclegan.build import batch_to_device, build_training, make_accelerator
from cyclegan.config import DataConfig, RunConfig
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.stream import UnpairedStream, find_sources, train_loader
from cyclegan.step import train_step


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


class PhaseTimer:
    """Wall time per phase of a step; waits for the device at each mark, so only for breakdowns."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self.sync()
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: process RSS


def step_flops(accelerator: Accelerator, cfg: RunConfig) -> int:
    """FLOPs of one training step (every forward and backward), counted on eager copies of the
    networks (the counter cannot see inside compiled graphs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counting = replace(cfg, perf=replace(cfg.perf, compile=False))
    nets, opts, pools = build_training(accelerator, counting)
    batch = batch_to_device(synthetic_batch(counting, torch.Generator().manual_seed(0)), accelerator.device,
                            cfg.perf.channels_last)
    with FlopCounterMode(display=False) as counter:
        train_step(accelerator, nets, opts, pools, batch, counting.train)
    return counter.get_total_flops()


def synthetic_batch(cfg: RunConfig, generator: torch.Generator) -> dict:
    shape = (cfg.train.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size)
    return {k: torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for k in ("A", "B")}


def step_benchmark(cfg: RunConfig, steps: int, warmup: int, repeats: int, peak_tflops: float | None,
                   use_shards: bool) -> dict:
    """The training step of `cfg` (the same code as training), timed; median over repeats."""
    accelerator = make_accelerator(cfg)
    nets, opts, pools = build_training(accelerator, cfg)
    device = accelerator.device
    if use_shards:
        sources = find_sources(cfg.data)
        stream = UnpairedStream(sources, cfg.data, cfg.train.batch_size, 10**9, cfg.seed)
        batches = iter(train_loader(stream, pin_memory=device.type == "cuda"))
    else:
        generator = torch.Generator().manual_seed(0)
        fixed = [synthetic_batch(cfg, generator) for _ in range(4)]
        batches = itertools.cycle(fixed)
    timer = PhaseTimer(device)

    def one_step(mark) -> None:
        batch = next(batches)
        mark("data")
        train_step(accelerator, nets, opts, pools, batch_to_device(batch, device, cfg.perf.channels_last),
                   cfg.train, mark)

    compile_start = time.perf_counter()
    for _ in range(warmup):
        one_step(lambda phase: None)
    timer.sync()
    warmup_seconds = time.perf_counter() - compile_start
    per_step = []
    for _ in range(repeats):
        timer.start()
        start = time.perf_counter()
        for _ in range(steps):
            one_step(lambda phase: None)
        timer.sync()
        per_step.append((time.perf_counter() - start) / steps)
    timer.start()
    for _ in range(steps):
        one_step(timer.mark)
    seconds = statistics.median(per_step)
    memory = peak_memory_gib(device)
    flops = step_flops(accelerator, cfg)
    achieved = flops / seconds / 1e12
    pairs = cfg.train.batch_size * accelerator.num_processes
    return {
        "size": cfg.data.crop_size, "batch": cfg.train.batch_size, "precision": cfg.train.mixed_precision,
        "channels_last": cfg.perf.channels_last, "compile": cfg.perf.compile, "data": "shards" if use_shards else "synthetic",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "pairs_per_s": pairs / seconds, "seconds_per_step": seconds, "seconds_per_step_runs": per_step,
        "breakdown_seconds_per_step": {k: v / steps for k, v in timer.totals.items()},
        "warmup_seconds": warmup_seconds, "peak_memory_gib": memory,
        "flops_per_step": flops, "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None,
    }
