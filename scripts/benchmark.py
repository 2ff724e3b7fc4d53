#!/usr/bin/env python3
"""Benchmarks; results go to docs/benchmarks.md.

    python scripts/benchmark.py loader --workdir /tmp/bench --workers 0 1 2
    python scripts/benchmark.py step --size 256 --batch 1 --precision bf16 --channels-last --compile \\
        --peak-tflops 989 --json h100-256-b1.json
    python scripts/benchmark.py step --size 256 --sweep          # the fastest setting for this machine
    python scripts/benchmark.py step --size 256 --convs          # each convolution in fp32 and bf16
    python scripts/benchmark.py step --size 256 --objectives cyclegan,cut,fastcut   # time and memory of each
    python scripts/benchmark.py memory --size 256 512 1024 --batch 1   # large images: memory and time per step
    python scripts/benchmark.py memory --plan --budget 24GiB     # the largest crop and batch that fit
    python scripts/benchmark.py translate --workdir /tmp/bench-translate --precision fp32
    python scripts/benchmark.py quality --workdir /tmp/quality --seeds 0 1 2 --jobs 2
    python scripts/benchmark.py resume --workdir /tmp/bench-resume --positions 0 50000
    python scripts/benchmark.py summary OUT                      # the table of scripts/gpu_benchmark.sh's OUT
"""

import argparse
import json
import os
from pathlib import Path

from cyclegan.benchmarks.convs import conv_benchmark
from cyclegan.benchmarks.loader import loader_benchmark
from cyclegan.benchmarks.memory import memory_benchmark, memory_plan
from cyclegan.benchmarks.objectives import objectives_benchmark
from cyclegan.benchmarks.resume import resume_benchmark
from cyclegan.benchmarks.step import step_benchmark
from cyclegan.benchmarks.summary import results_table
from cyclegan.benchmarks.sweep import SWEEP_AXES, step_sweep
from cyclegan.benchmarks.translate import translate_benchmark
from cyclegan.config import load_config
from cyclegan.models.recompute import LEVELS
from cyclegan.errors import exit_on_user_error
from cyclegan.io.files import atomic_write
from cyclegan.memory import memory_budget_ok
from cyclegan.objectives import OBJECTIVES
from cyclegan.quality import RUNS, TASKS, quality_experiment


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    sub = parser.add_subparsers(dest="mode", required=True)
    loader = sub.add_parser("loader", help="training-loader images/s on JPEG shards")
    loader.add_argument("--workdir", type=Path, required=True, help="where the synthetic JPEG shards are made")
    loader.add_argument("--images", type=int, default=400, help="JPEGs per domain")
    loader.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="loader worker counts to time (0: in the main process)")
    loader.add_argument("--batches", type=int, default=300, help="timed batches per repetition")
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--image-size", type=int, default=256, help="side of the synthetic source JPEGs")
    loader.add_argument("--jpeg-draft", action="store_true",
                        help="time the reduced-scale JPEG decode (data.jpeg_draft) and measure how it moves pixels")
    step = sub.add_parser("step", help="the training step: pairs/s, time breakdown, memory, FLOPs, MFU")
    step.add_argument("--config", default=None, help="YAML config (default: the paper's networks)")
    step.add_argument("--size", type=int, default=256, help="crop size in pixels")
    step.add_argument("--batch", type=int, default=1, help="per-device batch")
    step.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no")
    step.add_argument("--channels-last", action="store_true")
    step.add_argument("--compile", action="store_true")
    step.add_argument("--data", help="shard folder: time real batches from the loader instead of synthetic ones")
    step.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    step.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    step.add_argument("--repeats", type=int, default=3)
    step.add_argument("--peak-tflops", type=float, help="the device's peak for this precision, for MFU")
    step.add_argument("--sweep", action="store_true",
                      help="time every combination of precision x layout x compile, then the Adam variants on the "
                           "fastest, and print the overrides of the fastest (the swept axes replace --precision, "
                           "--channels-last and --compile)")
    step.add_argument("--sweep-axes", default=",".join(SWEEP_AXES),
                      help=f"with --sweep: the axes to vary, comma-separated (default {','.join(SWEEP_AXES)})")
    step.add_argument("--official", type=Path, metavar="CHECKOUT",
                      help="also time the official implementation's update in the same run, from a local checkout of "
                           "junyanz/pytorch-CycleGAN-and-pix2pix, and give ours as a ratio to it")
    step.add_argument("--convs", action="store_true",
                      help="time each convolution of a --precision step (bf16 if not given) alone, on the input "
                           "type the step hands it, and the same in fp32, --repeats single calls each (on an idle "
                           "machine), times its calls per step: what lower precision gives the convolutions "
                           "themselves on this machine's kernels")
    step.add_argument("--objectives", metavar="NAMES",
                      help="compare these objectives in one run (comma-separated, e.g. cyclegan,cut,fastcut): "
                           "seconds per step, their repetitions interleaved, and peak memory and FLOPs, each in a "
                           "fresh process; ratios against the first")
    step.add_argument("overrides", nargs="*", help="config overrides, e.g. model.n_blocks=6")
    memory = sub.add_parser("memory", help="large images: peak memory and s/step by crop size, objective, precision "
                                           "and activation checkpointing; or the plan of what fits a budget")
    memory.add_argument("--config", default=None, help="YAML config (default: the paper's networks)")
    memory.add_argument("--size", type=int, nargs="+", default=[256, 512, 1024], help="crop sizes in pixels")
    memory.add_argument("--batch", type=int, default=1, help="per-device batch")
    memory.add_argument("--objective", nargs="+", choices=list(OBJECTIVES),
                        help="default: cyclegan when measuring, all three with --plan")
    memory.add_argument("--precision", nargs="+", choices=("no", "bf16", "fp16"),
                        help="default: no (fp32) when measuring, no and bf16 with --plan")
    memory.add_argument("--activation-checkpointing", nargs="+", choices=LEVELS, default=list(LEVELS))
    memory.add_argument("--steps", type=int, default=1, help="timed steps after the first (each combination)")
    memory.add_argument("--plan", action="store_true",
                        help="measure nothing: for each objective, precision and level, the largest crop (at "
                             "--batch) and the largest batch (at each --size) whose estimated peak fits --budget")
    memory.add_argument("--budget", help="with --plan: memory per device, e.g. 24GiB (default: this machine's free "
                                         "memory)")
    memory.add_argument("overrides", nargs="*", help="config overrides, e.g. model.ngf=32 (before the options that "
                                                     "take several values)")
    translate = sub.add_parser("translate", help="translation: folders, shards, large tiled images, video")
    translate.add_argument("--workdir", type=Path, required=True, help="where inputs and outputs are made")
    translate.add_argument("--sizes", type=int, nargs="*", default=[256, 1024], help="image sides for folders/shards")
    translate.add_argument("--images", type=int, default=8, help="images per size")
    translate.add_argument("--large", type=int, nargs="*", default=[4096, 10000], help="sides of single tiled images")
    translate.add_argument("--frames", type=int, default=24, help="frames of the 256 px test video")
    translate.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32")
    translate.add_argument("--tile", type=int, default=512)
    quality = sub.add_parser("quality", help="paper vs EMA vs DiffAugment vs CUT and FastCUT on synthetic tasks "
                                             "(docs/quality.md)")
    quality.add_argument("--workdir", type=Path, required=True)
    quality.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    quality.add_argument("--steps", type=int, default=400, help="optimizer steps per run, on every task")
    quality.add_argument("--jobs", type=int, default=1, help="training runs at a time (the cores are shared out)")
    quality.add_argument("--variants", nargs="+", choices=list(RUNS), default=list(RUNS),
                         help="which runs to train and score on every task (default: all)")
    quality.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS),
                         help="which tasks (default: all)")
    resume = sub.add_parser("resume", help="a resumed training stream's time to its first batch, by epoch position")
    resume.add_argument("--workdir", type=Path, required=True, help="where the small-image shards are made")
    resume.add_argument("--images", type=int, default=60000, help="images per domain")
    resume.add_argument("--positions", type=int, nargs="+", default=[0, 50000], help="epoch positions, in samples")
    resume.add_argument("--repeats", type=int, default=3)
    summary = sub.add_parser("summary", help="the markdown table of a folder of step and loader results")
    summary.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.mode == "summary":
        print("\n".join(results_table(args.folder)))
        return
    if args.mode == "quality":
        result = quality_experiment(args.workdir, args.seeds, args.steps, args.jobs, args.variants, args.tasks)
    elif args.mode == "translate":
        result = translate_benchmark(args.workdir, args.sizes, args.images, args.large, args.frames, args.precision,
                                     args.tile)
    elif args.mode == "memory" and args.plan:
        if args.budget and (not memory_budget_ok(args.budget) or args.budget.lower() == "off"):
            parser.error(f"--budget {args.budget}: give a size such as 24GiB, 500MB or 8e9 (bytes)")
        result = memory_plan(args.config, args.overrides, args.size, args.batch, args.objective or list(OBJECTIVES),
                             args.precision or ["no", "bf16"], args.activation_checkpointing, args.budget)
    elif args.mode == "memory":
        if args.budget:
            parser.error("--budget goes with --plan: the measurement runs what this machine holds")
        result = memory_benchmark(args.config, args.overrides, args.size, args.batch, args.objective or ["cyclegan"],
                                  args.precision or ["no"], args.activation_checkpointing, args.steps)
    elif args.mode == "resume":
        result = resume_benchmark(args.workdir, args.images, args.positions, args.repeats)
    elif args.mode == "loader":
        result = loader_benchmark(args.workdir, args.images, args.workers, args.batches, args.repeats,
                                  args.image_size, args.jpeg_draft)
    else:
        overrides = [f"data.crop_size={args.size}", f"data.load_size={args.size}", f"train.batch_size={args.batch}",
                     f"train.mixed_precision={args.precision}", f"perf.channels_last={args.channels_last}",
                     f"perf.compile={args.compile}", "output_dir=/tmp/cyclegan-benchmark"]
        if args.data:
            overrides.append(f"data.root={args.data}")
        cfg = load_config(args.config, [*overrides, *args.overrides])
        if args.official and (args.sweep or args.data):
            parser.error("--official times both updates on the same synthetic batches: not with --sweep or --data")
        if args.official and cfg.model.objective != "cyclegan":
            parser.error(f"--official times the official CycleGAN update: it has no {cfg.model.objective} to "
                         "compare with (leave model.objective at cyclegan, or drop --official)")
        if args.objectives and (args.sweep or args.official or args.convs or args.data or args.peak_tflops):
            parser.error("--objectives times each objective on the same synthetic batches: not with --sweep, "
                         "--official, --convs, --data or --peak-tflops")
        if args.objectives and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            parser.error("--objectives measures each objective in a process of its own: run it without several "
                         "processes (no accelerate launch --num_processes)")
        if args.convs and (args.sweep or args.official or args.data or args.compile):
            parser.error("--convs times the eager convolutions on random inputs: not with --sweep, --official, "
                         "--data or --compile")
        if args.objectives:
            names = [name.strip() for name in args.objectives.split(",") if name.strip()]
            if not names or len(set(names)) < len(names) or set(names) - set(OBJECTIVES):
                parser.error(f"--objectives takes distinct names out of {', '.join(OBJECTIVES)}, comma-separated")
            cfgs = {name: load_config(args.config, [*overrides, *args.overrides, f"model.objective={name}"])
                    for name in names}
            result = objectives_benchmark(cfgs, args.steps, args.warmup, args.repeats)
        elif args.convs:
            low = "bf16" if args.precision == "no" else args.precision
            result = conv_benchmark(cfg, low, args.repeats)
        elif args.sweep:
            axes = tuple(a.strip() for a in args.sweep_axes.split(",") if a.strip())
            if not axes or set(axes) - set(SWEEP_AXES):
                parser.error(f"--sweep-axes takes a comma-separated list of {', '.join(SWEEP_AXES)}")
            result = step_sweep(cfg, args.steps, args.warmup, args.repeats, bool(args.data), axes)
        else:
            result = step_benchmark(cfg, args.steps, args.warmup, args.repeats, args.peak_tflops, bool(args.data),
                                    args.official)
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch: every rank timed, one reports
        return
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        atomic_write(args.json, text + "\n")
    if args.mode == "memory" or (args.mode == "step" and (args.sweep or args.convs or args.objectives)):
        print("\n".join(result["markdown"]))  # last, where the fastest setting stays in view


if __name__ == "__main__":
    main()
