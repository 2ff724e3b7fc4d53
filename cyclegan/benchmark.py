"""Measurements behind docs/benchmarks.md. Timings live here, never in tests."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import sys
import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env
from PIL import Image

from cyclegan.build import batch_to_device, build_training, make_accelerator
from cyclegan.config import DataConfig, RunConfig
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, train_loader
from cyclegan.hardware import device_name, machine
from cyclegan.images import open_image, to_rgb
from cyclegan.step import Networks, train_step


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


def eager_step(accelerator: Accelerator, cfg: RunConfig) -> tuple[Networks, Callable[[], None]]:
    """Fresh eager networks of `cfg` and one training step of them on a synthetic batch, to be run
    under a counter or with hooks (neither can see inside compiled graphs)."""
    cfg = replace(cfg, perf=replace(cfg.perf, compile=False))
    nets, opts, pools = build_training(accelerator, cfg)
    batch = batch_to_device(synthetic_batch(cfg, torch.Generator().manual_seed(0)), accelerator.device,
                            cfg.perf.channels_last)
    return nets, lambda: train_step(accelerator, nets, opts, pools, batch, cfg.train)


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


def step_benchmark(cfg: RunConfig, steps: int, warmup: int, repeats: int, peak_tflops: float | None,
                   use_shards: bool, official: Path | None = None) -> dict:
    """The training step of `cfg` (the same code as training), timed; median over repeats. With
    `official` (a local checkout of the official code), its update is timed too, its repeats
    interleaved with ours (a machine whose speed drifts then moves both alike), and the result
    gives our speed-up as the median of the per-repeat ratios."""
    accelerator = make_accelerator(cfg)
    nets, opts, pools = build_training(accelerator, cfg)
    device = accelerator.device
    if use_shards:
        sources = find_sources(cfg.data)
        stream = UnpairedStream(sources, cfg.data, cfg.train.batch_size, 10**9, cfg.seed,
                                channels=(cfg.model.input_nc, cfg.model.output_nc))
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
    memory = peak_memory_gib(device)  # before the official model exists: ours alone
    theirs = official_stepper(official, cfg) if official else None
    for _ in range(warmup if theirs else 0):
        theirs()
    per_step, official_per_step = [], []
    for repeat in range(repeats):  # with the official code: interleaved, each first in turn
        ours_first = repeat % 2 == 0 or theirs is None
        if not ours_first:
            official_per_step.append(timer.seconds_per_step(theirs, steps))
        per_step.append(timer.seconds_per_step(lambda: one_step(lambda phase: None), steps))
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
    cuda = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
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
    generator = torch.Generator().manual_seed(0)
    fixed = [{k: v.float().div(127.5).sub(1.0) for k, v in synthetic_batch(cfg, generator).items()} for _ in range(4)]
    batches = itertools.cycle(fixed)

    def one_step() -> None:
        model.set_input({**next(batches), "A_paths": [""] * t.batch_size, "B_paths": [""] * t.batch_size})
        model.optimize_parameters()

    return one_step


def conv_calls(accelerator: Accelerator, cfg: RunConfig) -> dict[tuple, dict]:
    """Every convolution one eager training step of `cfg` runs, grouped by what decides its
    kernels: the layer, its input (shape, type, layout: under autocast some layers hand the next
    fp32, others bf16) and which gradients its backward computes (a generator's first convolution
    needs no input gradient on a real image, a discriminator's weights none during the
    generators' update). Counted by hooks on a real step."""
    nets, step = eager_step(accelerator, cfg)
    calls: dict[tuple, dict] = {}

    def record(net: str, module: torch.nn.Module, args: tuple) -> None:
        x, grad = args[0], torch.is_grad_enabled()
        layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else "contiguous"
        key = (repr(module), tuple(x.shape), x.dtype, layout, grad and x.requires_grad,
               grad and module.weight.requires_grad)
        entry = calls.setdefault(key, {"module": module, "networks": set(), "calls": 0})
        entry["networks"].add(net)
        entry["calls"] += 1

    handles = [module.register_forward_pre_hook(functools.partial(record, net))
               for net, network in (("G", nets.g_ab), ("G", nets.g_ba), ("D", nets.d_a), ("D", nets.d_b))
               for module in network.modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def conv_benchmark(cfg: RunConfig, low: str, repeats: int) -> dict:
    """Each convolution of a `low`-precision step alone, forward and the backward the step asks of
    it, on an input of the type and layout the step hands it, and the same in fp32; times its
    calls per step. What the precision gives the convolutions themselves on this machine's
    kernels: where they dominate a step, what is left to gain lies in them."""
    cfg = replace(cfg, train=replace(cfg.train, mixed_precision=low), perf=replace(cfg.perf, compile=False))
    accelerator = make_accelerator(cfg)
    timer = PhaseTimer(accelerator.device)
    rows = []
    for (_, shape, dtype, layout, input_grad, weight_grad), entry in conv_calls(accelerator, cfg).items():
        module = entry["module"]
        row = {"layer": _layer_name(module), "networks": "+".join(sorted(entry["networks"])),
               "input": "x".join(map(str, shape)), "input_dtype": str(dtype).removeprefix("torch."),
               "input_layout": layout, "input_grad": input_grad, "weight_grad": weight_grad,
               "calls_per_step": entry["calls"]}
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        for precision, input_dtype in (("fp32", torch.float32), (low, dtype)):
            row[f"ms_{precision}"] = 1e3 * _conv_seconds(module, shape, input_dtype, memory_format, input_grad,
                                                        weight_grad, precision, timer, repeats)
        rows.append(row)
    totals = {p: sum(r[f"ms_{p}"] * r["calls_per_step"] for r in rows) / 1e3 for p in ("fp32", low)}
    return {"device": device_name(accelerator.device), "size": cfg.data.crop_size, "batch": cfg.train.batch_size,
            "precision": low, "channels_last": cfg.perf.channels_last, "rows": rows,
            "conv_seconds_per_step_fp32": totals["fp32"], f"conv_seconds_per_step_{low}": totals[low],
            "conv_speedup": totals["fp32"] / totals[low], "markdown": conv_table(rows, low, totals)}


def _layer_name(module: torch.nn.Module) -> str:
    kind = "convT" if isinstance(module, torch.nn.ConvTranspose2d) else "conv"
    return f"{kind} {module.in_channels}->{module.out_channels} k{module.kernel_size[0]} s{module.stride[0]}"


def _conv_seconds(module: torch.nn.Module, shape: tuple, dtype: torch.dtype, memory_format: torch.memory_format,
                  input_grad: bool, weight_grad: bool, precision: str, timer: PhaseTimer, repeats: int) -> float:
    """Median seconds of one call of `module` under `precision`'s autocast on a random input:
    forward, and backward to what the step needs (nothing when it needs no gradient)."""
    x = torch.randn(shape, device=module.weight.device, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_(input_grad)
    module.requires_grad_(weight_grad)
    low = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def call() -> None:
        with torch.autocast(x.device.type, low, enabled=low is not None), \
                torch.set_grad_enabled(input_grad or weight_grad):
            out = module(x)
        if input_grad or weight_grad:
            out.backward(torch.ones_like(out))
            x.grad = None  # each call writes fresh gradients, as the step's first backward does
            module.zero_grad(set_to_none=True)

    for _ in range(2):
        call()
    return statistics.median(timer.seconds_per_step(call, 1) for _ in range(repeats))


def conv_table(rows: list[dict], low: str, totals: dict[str, float]) -> list[str]:
    """The convolution benchmark as markdown: each layer, its calls per step, its time per step in
    fp32 and in `low`, their ratio, and the totals."""
    lines = [f"| network | layer | input | grads | calls/step | fp32 ms/step | {low} ms/step | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        grads = "+".join(g for g, on in (("input", r["input_grad"]), ("weight", r["weight_grad"])) if on) or "none"
        fp32, lower = r["ms_fp32"] * r["calls_per_step"], r[f"ms_{low}"] * r["calls_per_step"]
        layout = ", channels_last" if r["input_layout"] == "channels_last" else ""
        lines.append(f"| {r['networks']} | {r['layer']} | {r['input']} {r['input_dtype']}{layout} | {grads} | "
                     f"{r['calls_per_step']} | {fp32:.1f} | {lower:.1f} | {fp32 / lower:.2f}x |")
    lines.append(f"| all | | | | {sum(r['calls_per_step'] for r in rows)} | {1e3 * totals['fp32']:.0f} | "
                 f"{1e3 * totals[low]:.0f} | **{totals['fp32'] / totals[low]:.2f}x** |")
    return lines


def results_table(folder: Path) -> list[str]:
    """Markdown rows of the step and loader results in `folder` (scripts/gpu_benchmark.sh's
    files): each step with its speed-up against the official update where it was timed, the
    scaling over the node's GPUs (files named NAME-xN beside NAME), and the loader's headroom over
    the fastest step's demand per GPU. Other JSON files are left out."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is no folder of results")

    def order(name: str) -> tuple:
        return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))

    steps = {}
    for path in sorted(folder.glob("*.json"), key=lambda p: order(p.stem)):
        result = json.loads(path.read_text())
        if isinstance(result, dict) and result.get("seconds_per_step") and result.get("pairs_per_s"):
            steps[path.stem] = result
    lines = ["| setting | device | s/step | pairs/s | TFLOP/s | MFU | vs official | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in steps.items():
        def shown(key: str, form: str) -> str:
            return format(r[key], form) if r.get(key) is not None else "-"
        lines.append(f"| {name} | {r.get('device', '-')} | {r['seconds_per_step']:.4f} | {r['pairs_per_s']:.2f} | "
                     f"{shown('achieved_tflops', '.1f')} | {shown('mfu', '.1%')} | "
                     f"{shown('speedup_vs_official', '.2f')}{'x' if 'speedup_vs_official' in r else ''} | "
                     f"{shown('peak_memory_gib', '.1f')} GiB |")
    for name, r in steps.items():
        match = re.fullmatch(r"(.+)-x(\d+)", name)
        if match and match.group(1) in steps:
            gpus, single = int(match.group(2)), steps[match.group(1)]
            efficiency = r["pairs_per_s"] / (gpus * single["pairs_per_s"])
            lines.append(f"\nScaling, {match.group(1)} on {gpus} GPUs: {efficiency:.0%} of {gpus} x one GPU.")
    loader = folder / "loader.json"
    rates = json.loads(loader.read_text()).get("results") if loader.is_file() else None
    if rates:
        rate = rates[0]
        line = f"\nLoader, one rank with {rate['workers']} workers: {rate['images_per_s']:.0f} images/s"
        if steps:
            demand = 2 * max(r["pairs_per_s"] / int(r.get("processes", 1)) for r in steps.values())
            line += (f" against {demand:.0f} images/s asked by the fastest step per GPU: "
                     f"{rate['images_per_s'] / demand:.1f}x")
        lines.append(line + ".")
    return lines


SWEEP_AXES = ("precision", "layout", "compile", "adam")


def step_sweep(cfg: RunConfig, steps: int, warmup: int, repeats: int, use_shards: bool,
               axes: tuple[str, ...] = SWEEP_AXES) -> dict:
    """The fastest correct setting for this machine: every combination of precision x layout x
    compile (the `axes` asked for; the others stay at the config's), then the other Adam
    implementations on the fastest of those. Each setting is timed by `step_benchmark` in a fresh
    process, so that no compilation, thread pool or allocator state carries over; a setting that
    fails is reported and the sweep goes on."""
    on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")  # as Accelerator decides
    precisions = ("no", "bf16", "fp16") if on_gpu else ("no", "bf16")  # fp16 needs a GPU's scaler
    grid = itertools.product(precisions if "precision" in axes else (cfg.train.mixed_precision,),
                             (False, True) if "layout" in axes else (cfg.perf.channels_last,),
                             (False, True) if "compile" in axes else (cfg.perf.compile,))
    rows = [_timed_setting(cfg, steps, warmup, repeats, use_shards, p, layout, comp, cfg.perf.adam)
            for p, layout, comp in grid]
    if "adam" in axes and any("error" not in r for r in rows):
        best = min((r for r in rows if "error" not in r), key=lambda r: r["seconds_per_step"])
        rows += [_timed_setting(cfg, steps, warmup, repeats, use_shards, best["precision"], best["channels_last"],
                                best["compile"], adam) for adam in ("fused", "foreach", "for_loop")
                 if adam != {"auto": "fused"}.get(best["adam"], best["adam"])]
    timed = [r for r in rows if "error" not in r]
    for row in timed:  # against the first setting that ran (the config's own, unless it failed)
        row["speedup"] = timed[0]["seconds_per_step"] / row["seconds_per_step"]
    fastest = min(timed, key=lambda r: r["seconds_per_step"]) if timed else None
    return {"machine": device_name(torch.device("cuda" if on_gpu else "cpu")),
            "size": cfg.data.crop_size, "batch": cfg.train.batch_size, "rows": rows,
            "baseline": timed[0]["overrides"] if timed else None,
            "fastest_overrides": fastest["overrides"] if fastest else None, "markdown": sweep_table(rows, fastest)}


def _timed_setting(cfg: RunConfig, steps: int, warmup: int, repeats: int, use_shards: bool, precision: str,
                   channels_last: bool, compile_: bool, adam: str) -> dict:
    setting = replace(cfg, train=replace(cfg.train, mixed_precision=precision),
                      perf=replace(cfg.perf, channels_last=channels_last, compile=compile_, adam=adam))
    row = {"precision": precision, "channels_last": channels_last, "compile": compile_, "adam": adam,
           "overrides": f"train.mixed_precision={precision} perf.channels_last={str(channels_last).lower()} "
                        f"perf.compile={str(compile_).lower()} perf.adam={adam}"}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        try:
            result = fresh.submit(step_benchmark, setting, steps, warmup, repeats, None, use_shards).result()
        except Exception as err:  # a setting this machine cannot run (a compiler missing, say): reported
            lines = [line for line in str(err).splitlines() if line.strip()]
            return {**row, "error": (lines[0] if lines else type(err).__name__).replace("|", "/")}
    return {**row, "seconds_per_step": result["seconds_per_step"], "pairs_per_s": result["pairs_per_s"],
            "warmup_seconds": result["warmup_seconds"]}


def sweep_table(rows: list[dict], fastest: dict | None) -> list[str]:
    """The sweep as a markdown table, speed-ups against its first row that ran, and the fastest overrides."""
    lines = ["| precision | channels_last | compile | adam | s/step | speed-up |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            timing = f"failed: {r['error']} | -"
        else:
            timing = f"{r['seconds_per_step']:.3f} | {r['speedup']:.2f}x"
        lines.append(f"| {r['precision']} | {r['channels_last']} | {r['compile']} | {r['adam']} | {timing} |")
    if fastest:
        lines.append(f"fastest: {fastest['overrides']}")
    return lines
