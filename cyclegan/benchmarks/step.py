"""The training step timed (the same code as training): pairs/s, a breakdown by phase, memory,
FLOPs, MFU, and optionally the official implementation's update beside it."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from cyclegan.build import batch_to_device, build_training, make_accelerator
from cyclegan.config import RunConfig
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, train_loader
from cyclegan.hardware import device_name, training_device
from cyclegan.objectives import objective_for
from cyclegan.step import Networks


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

    def seconds_per_step(self, step: Callable[[], None], steps: int) -> float:
        """Mean wall time of `steps` calls of `step`, the device waited for at both ends."""
        self.start()
        for _ in range(steps):
            step()
        self.sync()
        return (time.perf_counter() - self.last) / steps

    def mark(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: process RSS


def training_stepper(accelerator: Accelerator, cfg: RunConfig,
                     batches: Iterator[dict]) -> tuple[Networks, Callable[..., None]]:
    """Fresh networks of `cfg` and their training step (the code training runs: `cfg`'s objective),
    each call on the next of `batches`, counting optimizer steps as training does (CUT draws its
    patches and FastCUT its mirror per step). The step takes an optional `mark(phase)`."""
    nets, opts, pools = build_training(accelerator, cfg)
    objective, device, counter = objective_for(cfg), accelerator.device, itertools.count()

    def one_step(mark: Callable[[str], None] = lambda phase: None) -> None:
        batch = next(batches)
        mark("data")
        objective.train_step(accelerator, nets, opts, pools, batch_to_device(batch, device, cfg.perf.channels_last),
                             cfg, next(counter), mark)

    return nets, one_step


def eager_step(accelerator: Accelerator, cfg: RunConfig) -> tuple[Networks, Callable[[], None]]:
    """Fresh eager networks of `cfg` and one training step of them on synthetic batches, to be run
    under a counter or with hooks (neither can see inside compiled graphs)."""
    return training_stepper(accelerator, replace(cfg, perf=replace(cfg.perf, compile=False)), synthetic_batches(cfg))


def step_flops(accelerator: Accelerator, cfg: RunConfig) -> int:
    """FLOPs of one training step (every forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, step = eager_step(accelerator, cfg)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def synthetic_batch(cfg: RunConfig, generator: torch.Generator) -> dict:
    """Random uint8 batches of each domain's channels."""
    size, channels = cfg.data.crop_size, {"A": cfg.model.input_nc, "B": cfg.model.output_nc}
    return {k: torch.randint(0, 256, (cfg.train.batch_size, c, size, size), dtype=torch.uint8, generator=generator)
            for k, c in channels.items()}


def synthetic_batches(cfg: RunConfig) -> Iterator[dict]:
    """Four seeded synthetic batches, in turn, for ever: every benchmark run times the same inputs."""
    generator = torch.Generator().manual_seed(0)
    return itertools.cycle([synthetic_batch(cfg, generator) for _ in range(4)])


def memory_growth_gib(device: torch.device, run: Callable[[], Any]) -> float:
    """The peak memory while `run` runs, over the level just before it (GiB): on a GPU the
    tensors PyTorch's allocator holds (`max_memory_allocated`: no CUDA context, no cached free
    blocks); on a CPU the process's resident set (RSS), whose high-water mark Linux resets on
    request, so every page the run touched counts: tensors, the allocator's and oneDNN's
    scratch, code loaded on first use. Without the reset (a /proc that refuses it) the mark is
    the process's own since it started: run this in a fresh process, where that is the import's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**30
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the high-water mark back to the current RSS (Linux 4.0+)
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) / 2**20


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fresh (spawned) process, and its result: no compilation, thread pool,
    allocator state or memory high-water mark carries over from this one or into it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        return fresh.submit(fn, *args).result()


def step_benchmark(cfg: RunConfig, steps: int, warmup: int, repeats: int, peak_tflops: float | None,
                   use_shards: bool, official: Path | None = None) -> dict:
    """The training step of `cfg` (the same code as training), timed; median over repeats. With
    `official` (a local checkout of the official code), its update is timed too, its repeats
    interleaved with ours (a machine whose speed drifts then moves both alike), and the result
    gives our speed-up as the median of the per-repeat ratios."""
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    if use_shards:
        sources = find_sources(cfg.data)
        stream = UnpairedStream(sources, cfg.data, cfg.train.batch_size, 10**9, cfg.seed,
                                channels=(cfg.model.input_nc, cfg.model.output_nc))
        batches = iter(train_loader(stream, pin_memory=device.type == "cuda"))
    else:
        batches = synthetic_batches(cfg)
    _, one_step = training_stepper(accelerator, cfg, batches)
    timer = PhaseTimer(device)

    compile_start = time.perf_counter()
    for _ in range(warmup):
        one_step()
    timer.sync()
    warmup_seconds = time.perf_counter() - compile_start
    memory = peak_memory_gib(device)  # before the official model exists: ours alone
    theirs = official_stepper(official, cfg) if official else None
    for _ in range(warmup if theirs else 0):
        theirs()
    per_step, official_per_step = [], []
    for repeat in range(repeats):  # with the official code: interleaved, each first in turn
        ours_first = repeat % 2 == 0 or theirs is None
        if not ours_first:
            official_per_step.append(timer.seconds_per_step(theirs, steps))
        per_step.append(timer.seconds_per_step(one_step, steps))
        if theirs and ours_first:
            official_per_step.append(timer.seconds_per_step(theirs, steps))
    timer.start()
    for _ in range(steps):
        one_step(timer.mark)
    seconds = statistics.median(per_step)
    flops = step_flops(accelerator, cfg)
    achieved = flops / seconds / 1e12
    pairs = cfg.train.batch_size * accelerator.num_processes
    comparison = {}
    if theirs:
        ratios = [o / ours for o, ours in zip(official_per_step, per_step)]
        comparison = {"official_seconds_per_step": statistics.median(official_per_step),
                      "official_seconds_per_step_runs": official_per_step,
                      "speedup_vs_official": statistics.median(ratios), "speedup_vs_official_runs": ratios}
    return {
        "objective": cfg.model.objective, "antialias": cfg.model.antialias,
        "size": cfg.data.crop_size, "batch": cfg.train.batch_size, "precision": cfg.train.mixed_precision,
        "processes": accelerator.num_processes,
        "channels_last": cfg.perf.channels_last, "compile": cfg.perf.compile, "data": "shards" if use_shards else "synthetic",
        "device": device_name(device),
        "pairs_per_s": pairs / seconds, "seconds_per_step": seconds, "seconds_per_step_runs": per_step,
        "breakdown_seconds_per_step": {k: v / steps for k, v in timer.totals.items()},
        "warmup_seconds": warmup_seconds, "peak_memory_gib": memory,
        "flops_per_step": flops, "achieved_tflops": achieved,
        "mfu": achieved / peak_tflops if peak_tflops else None, **comparison,
    }


def official_stepper(checkout: Path, cfg: RunConfig) -> Callable[[], None]:
    """One step of the official implementation's update (`CycleGANModel.optimize_parameters` of a
    local checkout of junyanz/pytorch-CycleGAN-and-pix2pix, imported from there, never copied),
    built with the networks of `cfg`, on the device ours uses, fed the same synthetic batches;
    fp32 (the official code has no mixed precision)."""
    from types import SimpleNamespace

    if not (checkout / "models" / "cycle_gan_model.py").is_file():
        raise SystemExit(f"--official {checkout}: no models/cycle_gan_model.py there; give a checkout of "
                         "https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix")
    if cfg.model.n_blocks not in (6, 9):
        raise SystemExit("--official: the official code builds 6 or 9 residual blocks only (model.n_blocks)")
    sys.path.insert(0, str(checkout))
    from models.cycle_gan_model import CycleGANModel

    m, t = cfg.model, cfg.train
    cuda = training_device().type == "cuda"
    opt = SimpleNamespace(
        input_nc=m.input_nc, output_nc=m.output_nc, ngf=m.ngf, ndf=m.ndf, netG=f"resnet_{m.n_blocks}blocks",
        netD="basic", n_layers_D=m.n_layers_d, norm=m.norm, no_dropout=not m.dropout, init_type="normal",
        init_gain=m.init_gain, gpu_ids=[0] if cuda else [], isTrain=True, gan_mode=t.gan_mode,
        pool_size=t.pool_size, lr=t.lr, beta1=t.beta1, lambda_A=t.lambda_cycle, lambda_B=t.lambda_cycle,
        lambda_identity=t.lambda_identity, direction="AtoB", checkpoints_dir=str(Path(cfg.output_dir) / "official"),
        name="benchmark", preprocess="resize_and_crop", continue_train=False, load_iter=0, epoch="latest",
        verbose=False, lr_policy="linear", epoch_count=1, n_epochs=t.epochs, n_epochs_decay=t.decay_epochs,
        niter=t.epochs, niter_decay=t.decay_epochs, lr_decay_iters=50)
    with contextlib.redirect_stdout(sys.stderr):  # it prints as it builds; stdout carries our JSON
        model = CycleGANModel(opt)
    fixed = [{k: v.float().div(127.5).sub(1.0) for k, v in batch.items()}  # converted once, outside its step
             for batch in itertools.islice(synthetic_batches(cfg), 4)]
    batches = itertools.cycle(fixed)

    def one_step() -> None:
        model.set_input({**next(batches), "A_paths": [""] * t.batch_size, "B_paths": [""] * t.batch_size})
        model.optimize_parameters()

    return one_step
