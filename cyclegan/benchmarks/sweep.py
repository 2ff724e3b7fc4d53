"""The fastest correct training setting for this machine: precision x layout x compile, then Adam."""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch

from cyclegan.benchmarks.step import in_fresh_process, step_benchmark
from cyclegan.config import RunConfig
from cyclegan.hardware import device_name, training_device


SWEEP_AXES = ("precision", "layout", "compile", "adam")


def step_sweep(cfg: RunConfig, steps: int, warmup: int, repeats: int, use_shards: bool,
               axes: tuple[str, ...] = SWEEP_AXES) -> dict:
    """The fastest correct setting for this machine: every combination of precision x layout x
    compile (the `axes` asked for; the others stay at the config's), then the other Adam
    implementations on the fastest of those. Each setting is timed by `step_benchmark` in a fresh
    process, so that no compilation, thread pool or allocator state carries over; a setting that
    fails is reported and the sweep goes on."""
    on_gpu = training_device().type == "cuda"
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
    try:
        result = in_fresh_process(step_benchmark, setting, steps, warmup, repeats, None, use_shards)
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
