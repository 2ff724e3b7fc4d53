"""The experiment behind docs/quality.md: the baseline update against averaged generators (EMA),
DiffAugment and the CUT and FastCUT objectives, at equal optimizer steps and several seeds, on
synthetic tasks whose test splits have exact ground truth, so that paired L1 and PSNR measure
quality (FID needs real Inception weights and more test images than such a table can afford).

Every run is `scripts/train.py` with configs/demo.yaml (the demo's small networks and learning
rate, not the paper's), in a process of its own, with the schedule stretched so that every task
trains for the same number of steps whatever its size. Averaging only watches training (the
trained weights are bitwise those of a run without it), so each run is scored twice: its trained
generators and its averaged ones. Scores cover the whole test split, in two tables: both
directions averaged (CycleGAN's runs), and A -> B alone for every run, since a CUT run trains
that direction only. A row of the identity (each test image scored as its own translation) gives
each task's scale.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from torch import nn

from cyclegan.checkpoint import complete_checkpoints, read_train_state
from cyclegan.config import DataConfig, load_config
from cyclegan.data.demo import write_demo_folders, write_outline_folders, write_recolour_folders
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import epoch_steps
from cyclegan.evaluation import Evaluator, load_test_split
from cyclegan.models import load_generator

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs/demo.yaml"
# With the warm-up, step t averages with decay min(EMA_DECAY, (1 + t) / (10 + t)): over 400 steps
# that is at most 0.978, so any EMA_DECAY from 0.98 up gives the same averages.
EMA_DECAY = 0.99
TASKS = {
    "demo scenes, 160 images": lambda root: write_demo_folders(root),
    "demo scenes, 40 images": lambda root: write_demo_folders(root, train=40),
    "recoloured textures, 160 images": lambda root: write_recolour_folders(root),
    "outlined shapes, 160 images": lambda root: write_outline_folders(root),
}
RUNS = {"baseline": [], "DiffAugment": ["train.diffaug=color,translation,cutout"],
        "CUT": ["model.objective=cut"], "FastCUT": ["model.objective=fastcut"]}


@dataclass(frozen=True)
class Run:
    task: str
    variant: str
    seed: int
    folder: Path
    shards: Path


def schedule_for(shards: Path, steps: int) -> list[str]:
    """Epoch overrides that make the whole schedule `steps` long, in the demo's 6:4 proportion of
    constant and decaying learning rate, so a smaller data set is not simply trained for less."""
    cfg = load_config(str(DEMO_CONFIG), [])
    per_epoch = epoch_steps(find_sources(DataConfig(root=str(shards))), cfg.train.batch_size)
    epochs = steps // per_epoch
    if epochs * per_epoch != steps or epochs < 2:
        raise ValueError(f"{steps} steps is not a whole number (at least 2) of {shards}'s {per_epoch}-step epochs")
    constant = round(epochs * cfg.train.epochs / (cfg.train.epochs + cfg.train.decay_epochs))
    return [f"train.epochs={constant}", f"train.decay_epochs={epochs - constant}"]


def finished(run: Run, steps: int) -> bool:
    """Whether the run's newest checkpoint is its last step (an interrupted run has exports too)."""
    saved = complete_checkpoints(run.folder / "checkpoints") if (run.folder / "checkpoints").is_dir() else []
    return bool(saved) and read_train_state(saved[-1]).step == steps


def train(run: Run, steps: int, threads: int) -> None:
    """One training run in its own process, resumed if it was interrupted; its error output is
    shown if it fails."""
    if finished(run, steps):
        return
    command = [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(DEMO_CONFIG),
               f"data.root={run.shards}", f"output_dir={run.folder}", f"seed={run.seed}", "tracking.mode=disabled",
               "tracking.num_images=0", f"train.ema_decay={EMA_DECAY}", *schedule_for(run.shards, steps),
               *RUNS[run.variant]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"training run {run.folder} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def paired_scores(split, g_ab: nn.Module, g_ba: nn.Module | None) -> dict[str, dict[str, float]]:
    """Mean paired L1 (levels of 255) and PSNR of A -> B ("AtoB") and, where there is a g_ba, of
    both directions averaged ("both")."""
    results = Evaluator(Accelerator(cpu=True), split, None)(g_ab, g_ba)
    scores = {"AtoB": {"l1": 255 * results["AtoB/l1"], "psnr": results["AtoB/psnr"]}}
    if g_ba is not None:
        scores["both"] = {"l1": 255 * (results["AtoB/l1"] + results["BtoA/l1"]) / 2,
                          "psnr": (results["AtoB/psnr"] + results["BtoA/psnr"]) / 2}
    return scores


def run_scores(run: Run, steps: int, split, suffix: str) -> dict[str, dict[str, float]]:
    """Scores of a finished run's last checkpoint: `suffix` "" for the trained generators, "_ema"
    for the averaged ones; A -> B alone for a CUT run, which has no g_ba."""
    if not finished(run, steps):
        raise RuntimeError(f"{run.folder} did not reach step {steps}")
    last = complete_checkpoints(run.folder / "checkpoints")[-1]
    g_ba = last / f"g_ba{suffix}.safetensors"
    return paired_scores(split, load_generator(last / f"g_ab{suffix}.safetensors"),
                         load_generator(g_ba) if g_ba.is_file() else None)


def row(task: str, variant: str, scores: list[dict[str, float]]) -> dict:
    """A table row: every run's scores, their means and sample standard deviations (None from a
    single run, which has no spread)."""
    result = {"task": task, "variant": variant, "runs": scores}
    for key in ("l1", "psnr"):
        values = [s[key] for s in scores]
        result[f"{key}_mean"] = statistics.mean(values)
        result[f"{key}_stdev"] = statistics.stdev(values) if len(values) > 1 else None
    return result


def mean_and_spread(mean: float, stdev: float | None) -> str:
    return f"{mean:.2f} ± {stdev:.2f}" if stdev is not None else f"{mean:.2f}"


def markdown(table: list[dict]) -> list[str]:
    """The table's rows as docs/quality.md shows them."""
    return [f"| {r['task']} | {r['variant']} | {mean_and_spread(r['l1_mean'], r['l1_stdev'])} | "
            f"{mean_and_spread(r['psnr_mean'], r['psnr_stdev'])} |" for r in table]


def task_rows(task: str, runs: list[Run], steps: int) -> tuple[list[dict], list[dict]]:
    """One task's rows of both tables: (both directions: two-way runs, trained and averaged; A -> B:
    every run's trained generator), each led by the identity."""
    split = load_test_split(find_sources(DataConfig(root=str(runs[0].shards))), 64)
    identity = paired_scores(split, nn.Identity(), nn.Identity())
    both, atob = ([row(task, "identity (no translation)", [identity[key]])] for key in ("both", "AtoB"))
    for variant in dict.fromkeys(run.variant for run in runs):
        mine = [run for run in runs if run.variant == variant]
        trained = [run_scores(run, steps, split, "") for run in mine]
        atob.append(row(task, variant, [s["AtoB"] for s in trained]))
        if "both" in trained[0]:
            averaged = [run_scores(run, steps, split, "_ema")["both"] for run in mine]
            both += [row(task, variant, [s["both"] for s in trained]), row(task, f"{variant} + EMA", averaged)]
    return both, atob


def quality_experiment(workdir: Path, seeds: list[int], steps: int, jobs: int = 1,
                       variants: list[str] | None = None, tasks: list[str] | None = None) -> dict:
    """Train every task x variant x seed (all of TASKS and RUNS, or those named), `jobs` at a time,
    then score trained and averaged weights."""
    variants = list(RUNS) if variants is None else variants
    tasks = list(TASKS) if tasks is None else tasks
    threads = max(1, (os.cpu_count() or 1) // jobs)
    planned = []
    for task in tasks:
        folder = workdir / task.replace(" ", "-").replace(",", "")
        shards = folder / "shards"
        if not (shards / "manifest.json").is_file():
            TASKS[task](folder / "folders")
            write_shards(find_domains(folder / "folders", None, None), shards, shard_size=40, workers=1,
                         overwrite=True)
        planned += [Run(task, variant, seed, folder / f"{variant}-{steps}steps-seed{seed}", shards)
                    for variant in variants for seed in seeds]
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda run: train(run, steps, threads), planned))
    table, atob_table = [], []
    for task in tasks:
        both, atob = task_rows(task, [run for run in planned if run.task == task], steps)
        table += both
        atob_table += atob
    return {"steps": steps, "seeds": seeds, "ema_decay": EMA_DECAY, "table": table, "atob_table": atob_table,
            "torch_threads_per_run": threads, "parallel_runs": jobs,
            "markdown": markdown(table), "atob_markdown": markdown(atob_table)}
