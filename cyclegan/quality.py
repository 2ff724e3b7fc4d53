"""The experiment behind docs/quality.md: the paper's settings against averaged generators (EMA)
and DiffAugment, at equal steps and several seeds, on synthetic tasks whose test splits have
exact ground truth, so that paired L1 and PSNR measure quality (FID needs real Inception
weights and more test images than such a table can afford). Every run is `scripts/train.py`
with configs/demo.yaml, in a process of its own; scores are the exported generators' (the
averaged ones for EMA), both directions averaged."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from cyclegan.config import DataConfig
from cyclegan.data.demo import write_demo_folders, write_recolour_folders
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.sources import find_sources
from cyclegan.evaluation import Evaluator, load_generator_pair, load_test_split

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    "demo scenes, 160 images": lambda root: write_demo_folders(root),
    "demo scenes, 40 images": lambda root: write_demo_folders(root, train=40),
    "recoloured textures, 160 images": lambda root: write_recolour_folders(root),
}
VARIANTS = {
    "paper": [],
    "EMA 0.99": ["train.ema_decay=0.99"],
    "DiffAugment": ["train.diffaug=color,translation,cutout"],
}


def paired_scores(run: Path, shards: Path) -> dict[str, float]:
    """Mean paired L1 (levels of 255) and PSNR of both directions, on the whole test split."""
    g_ab, g_ba = load_generator_pair(run)
    split = load_test_split(find_sources(DataConfig(root=str(shards))), 64)
    results = Evaluator(Accelerator(cpu=True), split, None)(g_ab, g_ba)
    return {"l1": 255 * (results["AtoB/l1"] + results["BtoA/l1"]) / 2,
            "psnr": (results["AtoB/psnr"] + results["BtoA/psnr"]) / 2}


def quality_experiment(workdir: Path, seeds: list[int], steps: int) -> dict:
    table = []
    for task, write in TASKS.items():
        folders, shards = workdir / task.replace(" ", "-") / "folders", workdir / task.replace(" ", "-") / "shards"
        if not (shards / "manifest.json").is_file():
            write(folders)
            write_shards(find_domains(folders, None, None), shards, shard_size=40, workers=1, overwrite=True)
        for variant, overrides in VARIANTS.items():
            scores = []
            for seed in seeds:
                run = shards.parent / f"{variant.replace(' ', '-')}-{seed}"
                if not (run / "export").is_dir():
                    subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "--config",
                                    str(ROOT / "configs/demo.yaml"), f"data.root={shards}", f"output_dir={run}",
                                    f"seed={seed}", f"train.max_steps={steps}", "tracking.mode=disabled",
                                    "tracking.num_images=0", *overrides], check=True, capture_output=True)
                scores.append(paired_scores(run, shards))
            table.append({"task": task, "variant": variant, "runs": scores,
                          **{f"{k}_{stat.__name__}": stat([s[k] for s in scores])
                             for k in ("l1", "psnr") for stat in (statistics.mean, statistics.stdev)}})
    return {"steps": steps, "seeds": seeds, "table": table, "torch_threads": torch.get_num_threads(),
            "markdown": [f"| {r['task']} | {r['variant']} | {r['l1_mean']:.2f} ± {r['l1_stdev']:.2f} | "
                         f"{r['psnr_mean']:.2f} ± {r['psnr_stdev']:.2f} |" for r in table]}
