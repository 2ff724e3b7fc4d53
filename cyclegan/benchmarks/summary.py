"""The markdown table of a folder of step and loader results (scripts/gpu_benchmark.sh's OUT)."""

from __future__ import annotations

import re
from pathlib import Path

from cyclegan.io.records import read_json


def results_table(folder: Path) -> list[str]:
    """Markdown rows of the step and loader results in `folder` (scripts/gpu_benchmark.sh's
    files): each step with its speed-up against the official update where it was timed, the
    scaling over the node's GPUs (files named NAME-xN beside NAME), and the loader's headroom over
    the fastest step's demand per GPU; then each comparison of the objectives (`step --objectives`)
    and each memory table (`memory`).
    Other JSON files are left out."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is no folder of results")

    def order(name: str) -> tuple:
        return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))

    steps, objectives, memories = {}, {}, {}
    for path in sorted(folder.glob("*.json"), key=lambda p: order(p.stem)):
        result = read_json(path)
        if result.get("seconds_per_step") and result.get("pairs_per_s"):
            steps[path.stem] = result
        elif result.get("reference") and result.get("markdown"):  # `step --objectives`
            objectives[path.stem] = result
        elif result.get("rows") and "checkpointing" in result["rows"][0] and "budget_gib" not in result:  # `memory`
            memories[path.stem] = result
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
    rates = read_json(loader).get("results") if loader.is_file() else None
    if rates:
        rate = rates[0]
        line = f"\nLoader, one rank with {rate['workers']} workers: {rate['images_per_s']:.0f} images/s"
        if steps:
            demand = 2 * max(r["pairs_per_s"] / int(r.get("processes", 1)) for r in steps.values())
            line += (f" against {demand:.0f} images/s asked by the fastest step per GPU: "
                     f"{rate['images_per_s'] / demand:.1f}x")
        lines.append(line + ".")
    for name, r in objectives.items():
        lines += ["", f"Objectives, {name} ({r.get('device', '-')}; {r.get('size')} px, batch {r.get('batch')}):", "",
                  *r["markdown"]]
    for name, r in memories.items():
        device = next((row["device"] for row in r["rows"] if "device" in row), "-")
        lines += ["", f"Large images, {name} ({device}):", "", *r["markdown"]]
    return lines
