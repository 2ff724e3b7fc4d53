"""Large images: the memory estimate against the peaks measured in docs/benchmarks.md, the run
that will not fit refused before any work with what would fit, the plan, and the
high-resolution recipe (train on native-resolution crops, translate whole images in tiles) end
to end on 1088 px images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.benchmarks.memory import memory_plan
from cyclegan.config import load_config
from cyclegan.data.demo import write_demo_folders
from cyclegan.memory import estimate_step_bytes, memory_refusal, ways_to_fit
from tests.conftest import ROOT, script

MEASURED = json.loads((ROOT / "tests/data/memory_cpu.json").read_text())["rows"]  # scripts/benchmark.py memory
# fp32 with every stage recomputed at 1024 px: the estimate, fitted at 512 px, is 66 % high.
# The C allocator keeps freed blocks of up to 32 MiB in its heap, where the resident set counts
# them; at 1024 px most blocks are larger and go back to the system at once (docs/benchmarks.md).
OVERESTIMATED = {("fp32", 1024, "all")}


def paper(objective: str = "cyclegan", *overrides: str):
    """The paper's networks, trained on crops of any size (`data.preprocess=crop`)."""
    return load_config(None, [f"model.objective={objective}", "data.preprocess=crop", *overrides])


def test_the_recorded_table_covers_every_objective_precision_and_level_at_256_and_512_px():
    measured = {(r["objective"], r["precision"], r["checkpointing"], r["size"]) for r in MEASURED if "peak_gib" in r}
    for objective in ("cyclegan", "cut", "fastcut"):
        for precision in ("fp32", "bf16"):
            for level in ("none", "blocks", "all"):
                assert {(objective, precision, level, size) for size in (256, 512)} <= measured
    # 1024 px: CycleGAN at what fits this machine (the others' steps take minutes there)
    assert {("cyclegan", p, level, 1024) for p, level in (("fp32", "all"), ("bf16", "blocks"), ("bf16", "all"))} <= measured


@pytest.mark.parametrize("row", [r for r in MEASURED if "peak_gib" in r],
                         ids=lambda r: f"{r['objective']}-{r['precision']}-{r['size']}-{r['checkpointing']}")
def test_the_estimate_is_within_15_percent_of_each_measured_peak(row):
    """The figures per pixel are fitted to the 512 px rows: the 256 and 1024 px rows are the check."""
    precision = {"fp32": "no"}.get(row["precision"], row["precision"])
    cfg = paper(row["objective"], f"train.mixed_precision={precision}", f"data.crop_size={row['size']}",
                f"data.load_size={row['size']}", f"train.batch_size={row['batch']}",
                f"perf.activation_checkpointing={row['checkpointing']}")
    # the measured run took a first step and the timed ones: its pools held that many translations
    estimate = estimate_step_bytes(cfg, int(row["baseline_gib"] * 2**30), steps=1 + len(row["seconds_per_step_runs"]))
    assert estimate / 2**30 == pytest.approx(row["estimate_gib"], rel=1e-6)  # what the table shows
    if (row["precision"], row["size"], row["checkpointing"]) in OVERESTIMATED:
        assert row["peak_gib"] < estimate / 2**30 < 2 * row["peak_gib"]  # on the safe side
    else:
        assert estimate / 2**30 == pytest.approx(row["peak_gib"], rel=0.15)


def test_a_step_too_large_for_its_budget_stops_before_any_work_naming_what_fits(tmp_path):
    """The refusal comes before the data is even looked for (data.root does not exist here)."""
    result = script("train.py", "data.root=/nonexistent", f"output_dir={tmp_path / 'run'}", "data.crop_size=1024",
                    "data.load_size=1024", "perf.memory_budget=16GiB", check=False)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "needs about" in message and "over perf.memory_budget (16.0 GiB)" in message
    for fix in ("perf.activation_checkpointing=all (", "data.crop_size=", "perf.memory_budget=off"):
        assert fix in message
    assert not (tmp_path / "run").exists()


def test_every_way_offered_fits_and_what_is_not_offered_does_not():
    cfg, baseline, budget = paper("cyclegan", "data.crop_size=1024"), 2**30, 14 * 2**30
    ways = ways_to_fit(cfg, baseline, budget)
    crop = int(next(w for w in ways if w.startswith("data.crop_size=")).split("=")[1].split()[0])
    assert estimate_step_bytes(paper("cyclegan", f"data.crop_size={crop}"), baseline) <= budget
    assert estimate_step_bytes(paper("cyclegan", f"data.crop_size={crop + 32}"), baseline) > budget
    offered = {w.split(" ")[0] for w in ways}
    for change in ("perf.activation_checkpointing=blocks", "perf.activation_checkpointing=all",
                   "train.mixed_precision=bf16", "model.objective=fastcut"):
        fits = estimate_step_bytes(paper("cyclegan", "data.crop_size=1024", change), baseline) <= budget
        assert (change in offered) == fits, change
    # no single change fits 8 GiB: the fewest that fit together
    assert ways_to_fit(cfg, baseline, 8 * 2**30)[0].startswith(
        "perf.activation_checkpointing=all + train.mixed_precision=bf16 (")
    # nothing offered that would be refused or cannot apply: checkpointing with batch norm, FastCUT across channel counts
    odd = paper("cyclegan", "data.crop_size=1024", "model.norm=batch", "model.input_nc=1", "train.lambda_identity=0")
    assert not any(w.startswith(("perf.", "model.")) for w in ways_to_fit(odd, baseline, 20 * 2**30))
    # a budget that fits: no refusal; unset on a CPU or off: no check at all
    assert memory_refusal(paper("cyclegan", "data.crop_size=64", "perf.memory_budget=64GiB"), _cpu()) is None
    assert memory_refusal(paper("cyclegan", "data.crop_size=4096"), _cpu()) is None
    assert memory_refusal(paper("cyclegan", "data.crop_size=4096", "perf.memory_budget=off"), _cpu()) is None
    assert "nothing here fits" in memory_refusal(paper("cyclegan", "perf.memory_budget=10MB"), _cpu())


def _cpu():
    return torch.device("cpu")


def test_the_plan_names_the_largest_crop_and_batch_that_fit():
    plan = memory_plan(None, [], [256, 512], 1, ["cyclegan", "fastcut"], ["no", "bf16"], ["none", "all"], "24GiB")
    rows = {(r["objective"], r["precision"], r["checkpointing"]): r for r in plan["rows"]}
    baseline = int(plan["baseline_gib"] * 2**30)
    for (objective, precision, level), row in rows.items():
        precision = "no" if precision == "fp32" else precision
        at = [f"train.mixed_precision={precision}", f"perf.activation_checkpointing={level}"]
        crop = row["largest_crop"]
        assert estimate_step_bytes(paper(objective, *at, f"data.crop_size={crop}"), baseline) <= 24 * 2**30
        assert estimate_step_bytes(paper(objective, *at, f"data.crop_size={crop + 32}"), baseline) > 24 * 2**30
        batch = row["largest_batch"][512]
        assert estimate_step_bytes(paper(objective, *at, "data.crop_size=512", f"train.batch_size={batch}"),
                                   baseline) <= 24 * 2**30
        assert estimate_step_bytes(paper(objective, *at, "data.crop_size=512", f"train.batch_size={batch + 1}"),
                                   baseline) > 24 * 2**30
    # the measured story: fp32 CycleGAN fits 1024 px only with every stage recomputed
    assert rows[("cyclegan", "fp32", "none")]["largest_crop"] < 1024 <= rows[("cyclegan", "fp32", "all")]["largest_crop"]
    assert "| cyclegan | fp32 | all |" in "\n".join(plan["markdown"])


def test_the_high_resolution_recipe_end_to_end(tmp_path):
    """README's recipe at demo size: 1088 px scenes, trained on 128 px crops at their native
    resolution (`data.preprocess=crop`) within a memory budget and with checkpointed blocks, then
    the whole test scene translated in tiles, equal to the untiled translation."""
    folders, shards, run = tmp_path / "folders", tmp_path / "shards", tmp_path / "run"
    write_demo_folders(folders, train=3, test=1, size=1088, seed=5)
    script("make_shards.py", "--input", folders, "--output", shards, "--shard-size", "8")
    script("train.py", "--config", "configs/demo.yaml", f"data.root={shards}", f"output_dir={run}",
           "data.preprocess=crop", "data.crop_size=128", "data.num_workers=0", "train.batch_size=2",
           "train.max_steps=2", "perf.activation_checkpointing=blocks", "perf.memory_budget=8GiB",
           "tracking.mode=disabled")
    for tile in ("256", "0"):
        script("translate.py", "--checkpoint", run / "export", "--direction", "AtoB", "--input", folders / "testA",
               "--output", tmp_path / f"tile{tile}", "--tile", tile, "--precision", "fp32")
    tiled, whole = (np.asarray(Image.open(next((tmp_path / f"tile{t}").glob("*.png"))), dtype=np.float64)
                    for t in ("256", "0"))
    assert tiled.shape == whole.shape == (1088, 1088, 3)
    mse = np.mean((tiled - whole) ** 2)
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 60
    assert whole.std() > 1  # a picture, not a flat field
