"""Large images: peak memory and seconds per step of a real training step at each crop size,
objective, precision and activation checkpointing level, each in a fresh process; and the plan,
which reads the estimate (`cyclegan.memory`) for the largest crop and batch that fit a budget."""

from __future__ import annotations

import itertools

from cyclegan.benchmarks.step import (PhaseTimer, in_fresh_process, memory_growth_gib, synthetic_batches,
                                      training_stepper)
from cyclegan.build import make_accelerator
from cyclegan.config import RunConfig, load_config
from cyclegan.hardware import device_name, training_device
from cyclegan.memory import (baseline_bytes, estimate_step_bytes, free_bytes, largest_batch, largest_crop,
                             parse_size)

PRECISIONS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def variant(config: str | None, overrides: list[str], objective: str, precision: str, level: str, size: int,
            batch: int) -> RunConfig:
    """The config file and overrides given, at one combination."""
    return load_config(config, [*overrides, f"model.objective={objective}", f"train.mixed_precision={precision}",
                                f"perf.activation_checkpointing={level}", f"data.crop_size={size}",
                                f"data.load_size={size}", f"train.batch_size={batch}"])


def step_footprint(cfg: RunConfig, steps: int) -> dict:
    """For a fresh process: the peak memory of building `cfg`'s networks and running 1 + `steps`
    training steps (the second holds weights, gradients, Adam's state and activations at once), the
    seconds per step of the last `steps`, and the estimate made before any of it."""
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    baseline = baseline_bytes(device)
    estimate = estimate_step_bytes(cfg, baseline, steps=1 + steps)  # the pools as these steps fill them
    timer, seconds = PhaseTimer(device), []

    def build_and_step() -> None:
        _, step = training_stepper(accelerator, cfg, synthetic_batches(cfg))
        step()
        seconds.extend(timer.seconds_per_step(step, 1) for _ in range(steps))

    growth = memory_growth_gib(device, build_and_step)
    return {"peak_gib": baseline / 2**30 + growth, "baseline_gib": baseline / 2**30,
            "estimate_gib": estimate / 2**30, "seconds_per_step": sum(seconds) / len(seconds),
            "seconds_per_step_runs": seconds, "device": device_name(device)}


def memory_benchmark(config: str | None, overrides: list[str], sizes: list[int], batch: int, objectives: list[str],
                     precisions: list[str], levels: list[str], steps: int) -> dict:
    """Every combination, each in a fresh process; one whose estimate exceeds what the machine has
    free is not run (it would only be killed), and its row says so."""
    rows, device = [], training_device()
    for objective, precision, size, level in itertools.product(objectives, precisions, sizes, levels):
        cfg = variant(config, overrides, objective, precision, level, size, batch)
        row = {"objective": objective, "precision": PRECISIONS[precision], "size": size, "batch": batch,
               "checkpointing": level}
        free, need = free_bytes(device), estimate_step_bytes(cfg, baseline_bytes(device), steps=1 + steps)
        if need > 0.9 * free:
            row.update(skipped=f"estimated {need / 2**30:.1f} GiB, beyond 90 % of the {free / 2**30:.1f} GiB free")
        else:
            try:
                row.update(in_fresh_process(step_footprint, cfg, steps))
            except Exception as err:  # e.g. killed for memory: the other rows still count
                row.update(skipped=f"failed: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
        print(row, flush=True)
        rows.append(row)
    return {"rows": rows, "markdown": memory_table(rows)}


def memory_table(rows: list[dict]) -> list[str]:
    """Markdown: each row's peak and time, against the same size, objective and precision without
    checkpointing, and the estimate's error."""
    lines = ["| objective | precision | size | checkpointing | peak memory | vs none | s/step | vs none | "
             "estimate | error |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    plain = {(r["objective"], r["precision"], r["size"]): r for r in rows
             if r["checkpointing"] == "none" and "peak_gib" in r}
    for r in rows:
        head = f"| {r['objective']} | {r['precision']} | {r['size']} | {r['checkpointing']} |"
        if "peak_gib" not in r:
            lines.append(f"{head} not run: {r['skipped']} | | | | | |")
            continue
        base = plain.get((r["objective"], r["precision"], r["size"]))
        memory_ratio = f"{r['peak_gib'] / base['peak_gib']:.0%}" if base else "-"
        time_ratio = f"{r['seconds_per_step'] / base['seconds_per_step']:.2f}x" if base else "-"
        error = r["estimate_gib"] / r["peak_gib"] - 1
        lines.append(f"{head} {r['peak_gib']:.2f} GiB | {memory_ratio} | {r['seconds_per_step']:.3g} | {time_ratio} | "
                     f"{r['estimate_gib']:.2f} GiB | {error:+.0%} |")
    return lines


def memory_plan(config: str | None, overrides: list[str], sizes: list[int], batch: int, objectives: list[str],
                precisions: list[str], levels: list[str], budget: str | None) -> dict:
    """From the estimate alone (nothing is run): for each objective, precision and level, the
    largest crop at `batch` and the largest batch at each of `sizes` whose step fits `budget`
    (default: what this machine has free), from this process's memory as the baseline."""
    device = training_device()
    limit = parse_size(budget) if budget else free_bytes(device)
    baseline = baseline_bytes(device)
    rows = []
    for objective, precision, level in itertools.product(objectives, precisions, levels):
        cfg = variant(config, overrides, objective, precision, level, sizes[0], batch)
        rows.append({"objective": objective, "precision": PRECISIONS[precision], "checkpointing": level,
                     "largest_crop": largest_crop(cfg, baseline, limit),
                     "largest_batch": {size: largest_batch(variant(config, overrides, objective, precision, level, size,
                                                                   batch), baseline, limit) for size in sizes}})
    head = " | ".join(f"batch at {size} px" for size in sizes)
    lines = [f"Budget {limit / 2**30:.1f} GiB per device ({device_name(device)}), from {baseline / 2**30:.2f} GiB "
             "before the networks:", "",
             f"| objective | precision | checkpointing | largest crop at batch {batch} | {head} |",
             "|" + " --- |" * (4 + len(sizes))]
    for r in rows:
        batches = " | ".join(str(r["largest_batch"][size]) for size in sizes)
        lines.append(f"| {r['objective']} | {r['precision']} | {r['checkpointing']} | {r['largest_crop'] or '-'} | "
                     f"{batches} |")
    return {"budget_gib": limit / 2**30, "baseline_gib": baseline / 2**30, "rows": rows, "markdown": lines}
