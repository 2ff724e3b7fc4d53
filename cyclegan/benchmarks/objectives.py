"""CycleGAN, CUT and FastCUT side by side: each objective's training step timed in one process, their
repetitions interleaved, and each one's peak memory and FLOPs measured in a fresh process of its own."""

from __future__ import annotations

import statistics

from cyclegan.benchmarks.step import (PhaseTimer, in_fresh_process, memory_growth_gib, step_flops, synthetic_batches,
                                      training_stepper)
from cyclegan.build import make_accelerator
from cyclegan.config import RunConfig
from cyclegan.hardware import device_name


def objectives_benchmark(cfgs: dict[str, RunConfig], steps: int, warmup: int, repeats: int) -> dict:
    """Seconds per step, peak memory and FLOPs of each objective's training step (`cfgs`: one config
    per objective, equal but for the objective and what it implies), each against the first's.

    Time: every objective is built in this process and timed in turn, the order rotating with each
    repetition, so that a machine whose speed drifts (a shared one, above all) moves all alike; the
    ratio is the median of the per-repetition ratios. Memory: in one process the first objective's
    freed memory would be reused by the next (RSS never shrinks back), so each is measured in a
    fresh process of its own, as the peak growth over the level just before its networks are built
    (`memory_growth_gib`), over a few steps: Adam's state exists from the first step's end, so the
    second step holds weights, gradients, optimizer state and activations at once."""
    footprints = {name: in_fresh_process(objective_footprint, cfg, max(warmup, 2)) for name, cfg in cfgs.items()}
    names, reference = list(cfgs), next(iter(cfgs))
    accelerator = make_accelerator(cfgs[reference])  # the precision and seed, shared by all
    timer = PhaseTimer(accelerator.device)
    steppers = {name: training_stepper(accelerator, cfg, synthetic_batches(cfg))[1] for name, cfg in cfgs.items()}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    runs: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):  # each objective first in turn
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            runs[name].append(timer.seconds_per_step(steppers[name], steps))
    rows = []
    for name, cfg in cfgs.items():
        ratios = [ours / theirs for ours, theirs in zip(runs[name], runs[reference])]
        rows.append({"objective": name, "antialias": cfg.model.antialias,
                     "seconds_per_step": statistics.median(runs[name]), "seconds_per_step_runs": runs[name],
                     "time_ratio": statistics.median(ratios), "time_ratio_runs": ratios, **footprints[name],
                     "memory_ratio": footprints[name]["peak_memory_growth_gib"]
                     / footprints[reference]["peak_memory_growth_gib"],
                     "flops_ratio": footprints[name]["flops_per_step"] / footprints[reference]["flops_per_step"]})
    first = cfgs[reference]
    return {"device": device_name(accelerator.device), "size": first.data.crop_size, "batch": first.train.batch_size,
            "precision": first.train.mixed_precision, "channels_last": first.perf.channels_last,
            "compile": first.perf.compile, "reference": reference, "rows": rows,
            "markdown": objectives_table(rows, reference)}


def objective_footprint(cfg: RunConfig, steps: int) -> dict:
    """The peak memory growth of building `cfg`'s networks and running `steps` training steps, and
    the FLOPs of one step; for a fresh process (`in_fresh_process`), whose memory nothing else moved."""
    accelerator = make_accelerator(cfg)
    batches = synthetic_batches(cfg)

    def build_and_step() -> None:
        _, step = training_stepper(accelerator, cfg, batches)
        for _ in range(steps):
            step()

    memory = memory_growth_gib(accelerator.device, build_and_step)
    return {"peak_memory_growth_gib": memory, "flops_per_step": step_flops(accelerator, cfg)}


def objectives_table(rows: list[dict], reference: str) -> list[str]:
    """The comparison as markdown: each objective's time, memory and FLOPs, and their ratios to `reference`'s."""
    lines = [f"| objective | anti-aliased | s/step | vs {reference} (per repetition) | peak memory growth | "
             f"vs {reference} | GFLOP/step | vs {reference} |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        each = ", ".join(f"{ratio:.2f}" for ratio in r["time_ratio_runs"])
        lines.append(f"| {r['objective']} | {'yes' if r['antialias'] else 'no'} | {r['seconds_per_step']:.3f} | "
                     f"**{r['time_ratio']:.2f}x** ({each}) | {r['peak_memory_growth_gib']:.2f} GiB | "
                     f"{r['memory_ratio']:.2f}x | {r['flops_per_step'] / 1e9:.4g} | {r['flops_ratio']:.2f}x |")
    return lines
