"""The speed switches change speed, not results. Never timed: speed lives in docs/benchmarks.md."""

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cyclegan.checkpoint import complete_checkpoints
from cyclegan.config import load_config
from cyclegan.hardware import native_bf16
from tests.conftest import ROOT, final_weights, max_difference, run, script, tiny


def metrics(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def losses(output):
    return [{k: v for k, v in row.items() if k.startswith("loss/")} for row in metrics(output)]


def assert_close_rows(ours, reference, rel):
    assert len(ours) == len(reference) > 0
    for mine, theirs in zip(ours, reference):
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=rel, abs=1e-6), key


def inductor_cache() -> dict:
    # Inductor's cache does not tell kernels built for one ATEN_CPU_CAPABILITY from another's
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "native")
    return {"TORCHINDUCTOR_CACHE_DIR": str(Path(tempfile.gettempdir()) / f"cyclegan-tests-inductor-{capability}")}


def train(shards, output, *extra, env=None):
    script("train.py", "--config", "configs/demo.yaml", *tiny(shards, output, "train.max_steps=3", *extra), env=env)


@pytest.mark.heavy  # about 20 s of training runs; make test stays within its budget without it
def test_channels_last_and_adam_variants_give_the_same_weights(noise_shards, tmp_path):
    # In float64, so that no CPU's kernels matter. A real bug moves weights by about lr (5e-4 here):
    # the controls, batches with height and width swapped (a layout bug) and an Adam built with its
    # default beta1, move them by 1e-3. What float64 rounding leaves is conv biases that feed
    # instance norm: their gradient is zero plus rounding noise, which Adam (eps 1e-8) turns into
    # updates of about 1e-10.
    def weights_after(name, *extra, harness_flags=()):
        run([sys.executable, str(ROOT / "tests/harness/train_fp64.py"), *harness_flags, "--config", "configs/demo.yaml",
             *tiny(noise_shards, tmp_path / name, "train.max_steps=3", "tracking.mode=disabled", *extra)])
        return final_weights(tmp_path / name)

    plain = weights_after("plain", "perf.adam=foreach")
    for adam in ("for_loop", "fused"):
        assert max_difference(weights_after(adam, "perf.channels_last=true", f"perf.adam={adam}"), plain) < 1e-7, adam
    transposed = weights_after("transposed", "perf.channels_last=true", harness_flags=["--transpose-batches"])
    assert max_difference(transposed, plain) > 1e-5
    assert max_difference(weights_after("beta1", "train.beta1=0.9"), plain) > 1e-5


@pytest.mark.slow
@pytest.mark.heavy  # about 15 s of compilation; perf.compile is opt-in, and make test stays within its budget
def test_compiled_networks_train_and_keep_official_keys(noise_shards, tmp_path):
    train(noise_shards, tmp_path / "eager")
    train(noise_shards, tmp_path / "compiled", "perf.compile=true", env=inductor_cache())
    compiled, eager = losses(tmp_path / "compiled"), losses(tmp_path / "eager")
    # Step 1 scores the same initial weights: only rounding differs. After that, Adam's
    # sign-like first steps let fused kernels' rounding grow, so later rows agree less tightly.
    assert_close_rows(compiled[:1], eager[:1], rel=1e-4)
    assert_close_rows(compiled, eager, rel=2e-2)
    weights = load_file(str(complete_checkpoints(tmp_path / "compiled" / "checkpoints")[-1] / "g_ab.safetensors"))
    assert "model.1.weight" in weights and not any("_orig_mod" in key for key in weights)


@pytest.mark.slow
@pytest.mark.heavy  # its bf16 graphs take about 40 s to compile with Inductor's cache empty
def test_bf16_compiled_networks_train_within_bf16_rounding(noise_shards, tmp_path):
    # bf16 compiled (about 2x the official step on CPUs with native bf16), two steps: the losses
    # of the initial weights, then of weights after one compiled bf16 backward and Adam step.
    # Means over every pixel, they moved from fp32's by up to 1.3e-3 (relative) on AVX-512,
    # SSE4.1 and default kernels: within 5e-3, so nothing is wrong beyond bf16's rounding. At
    # step 1 (the same weights) some loss moved by 4e-4 to 9e-4, more than the 1e-4 allowed
    # compiled fp32 (which moved them by 1e-7 here): the networks did run under autocast rather
    # than silently in fp32.
    train(noise_shards, tmp_path / "eager", "train.max_steps=2")
    train(noise_shards, tmp_path / "bf16", "perf.compile=true", "train.mixed_precision=bf16", "train.max_steps=2",
          env=inductor_cache())
    bf16, eager = losses(tmp_path / "bf16"), losses(tmp_path / "eager")
    assert_close_rows(bf16, eager, rel=5e-3)
    assert max(abs(bf16[0][key] / eager[0][key] - 1) for key in bf16[0] if eager[0][key]) > 1e-4
    assert [row["train/skipped_nonfinite_steps"] for row in metrics(tmp_path / "bf16")] == [0, 0]


def test_benchmark_step_reports_what_docs_need(tmp_path):
    result = run([sys.executable, str(ROOT / "scripts/benchmark.py"), "--json", str(tmp_path / "b.json"), "step",
                  "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1", "--repeats", "2",
                  "--peak-tflops", "1.0", "model.ngf=8", "model.n_blocks=1", "model.ndf=8"])
    report = json.loads((tmp_path / "b.json").read_text())
    assert report == json.loads(result.stdout)
    assert set(report["breakdown_seconds_per_step"]) == {"data", "generators", "discriminators", "optimizers"}
    assert report["pairs_per_s"] == pytest.approx(2 / report["seconds_per_step"])
    assert report["flops_per_step"] > 0 and report["mfu"] == pytest.approx(report["achieved_tflops"] / 1.0)
    assert len(report["seconds_per_step_runs"]) == 2 and report["peak_memory_gib"] > 0


def test_the_convolution_benchmark_times_every_call_of_a_step(tmp_path):
    result = run([sys.executable, str(ROOT / "scripts/benchmark.py"), "--json", str(tmp_path / "c.json"), "step",
                  "--size", "32", "--convs", "--repeats", "1", "model.ngf=8", "model.n_blocks=1", "model.ndf=8"])
    report = json.loads((tmp_path / "c.json").read_text())
    rows = report["rows"]
    calls = {(r["networks"], r["layer"], r["input"], r["input_grad"], r["weight_grad"]): r["calls_per_step"]
             for r in rows}
    # six generator passes (two translations, two reconstructions, two identities) of 8 convolutions;
    # six discriminator passes of 5: two judge the fakes for the generators' loss, four train them
    assert sum(n for (net, *_), n in calls.items() if net == "G") == 6 * 8
    assert sum(n for (net, *_), n in calls.items() if net == "D") == 6 * 5
    first_g, first_d = ("G", "conv 3->8 k7 s1", "1x3x38x38"), ("D", "conv 3->8 k4 s2", "1x3x32x32")
    assert calls[(*first_g, False, True)] == 4 and calls[(*first_g, True, True)] == 2  # real vs fake input
    assert calls[(*first_d, True, False)] == 2 and calls[(*first_d, False, True)] == 4  # frozen vs training
    # under bf16 autocast: images come in fp32 (the networks return fp32), a residual block's
    # padding keeps bf16 (autocast would pad in fp32 and hand the convolution fp32), the
    # discriminators' hidden layers bf16
    dtypes = {(r["networks"], r["layer"], r["input"], r["input_grad"], r["weight_grad"]): r["input_dtype"]
              for r in rows}
    assert [dtype for key, dtype in dtypes.items() if key[:3] in (first_g, first_d)] == ["float32"] * 4
    hidden = {dtype for key, dtype in dtypes.items() if key[1] in ("conv 32->32 k3 s1", "conv 8->16 k4 s2")}
    assert hidden == {"bfloat16"}
    assert all(r["ms_fp32"] > 0 and r["ms_bf16"] > 0 for r in rows)
    fp32_total = sum(r["ms_fp32"] * r["calls_per_step"] for r in rows) / 1e3
    assert report["conv_seconds_per_step_fp32"] == pytest.approx(fp32_total)
    assert report["conv_speedup"] == pytest.approx(report["conv_seconds_per_step_fp32"] /
                                                   report["conv_seconds_per_step_bf16"])
    assert result.stdout.rstrip().endswith(f"**{report['conv_speedup']:.2f}x** |")


def test_a_benchmark_of_an_impossible_setting_is_a_clear_error():
    result = script("benchmark.py", "step", "--size", "32", "--convs", "--precision", "fp16", check=False,
                    env={"ACCELERATE_USE_CPU": "true"})
    assert result.returncode == 2 and "fp16 needs a GPU" in result.stderr and "Traceback" not in result.stderr
    result = script("benchmark.py", "step", "--size", "32", "--official", ROOT, "model.objective=cut", check=False)
    assert result.returncode == 2 and "official CycleGAN update: it has no cut" in result.stderr


@pytest.mark.heavy  # about 20 s: three fresh processes beside the timed one
def test_the_objectives_are_compared_in_one_run(tmp_path):
    # each objective's memory and FLOPs come from a fresh process of its own: three start-ups
    result = run([sys.executable, str(ROOT / "scripts/benchmark.py"), "--json", str(tmp_path / "o.json"), "step",
                  "--size", "32", "--steps", "1", "--warmup", "1", "--repeats", "2", "--objectives",
                  "cyclegan,cut,fastcut", "model.ngf=8", "model.n_blocks=1", "model.ndf=8", "model.n_layers_d=1"])
    report = json.loads((tmp_path / "o.json").read_text())
    rows = {r["objective"]: r for r in report["rows"]}
    assert list(rows) == ["cyclegan", "cut", "fastcut"] and report["reference"] == "cyclegan"
    assert [r["antialias"] for r in rows.values()] == [False, True, True]  # each objective's own default
    reference = rows["cyclegan"]
    for r in rows.values():
        assert len(r["seconds_per_step_runs"]) == 2 and min(r["seconds_per_step_runs"]) > 0
        assert r["peak_memory_growth_gib"] > 0 and r["flops_per_step"] > 0
        per_repetition = [mine / theirs for mine, theirs in zip(r["seconds_per_step_runs"],
                                                                 reference["seconds_per_step_runs"])]
        assert r["time_ratio"] == pytest.approx(statistics.median(per_repetition))
        assert r["memory_ratio"] == pytest.approx(r["peak_memory_growth_gib"] / reference["peak_memory_growth_gib"])
        assert r["flops_ratio"] == pytest.approx(r["flops_per_step"] / reference["flops_per_step"])
    assert reference["time_ratio"] == reference["memory_ratio"] == 1
    # FastCUT drops CUT's identity pass on B: its generator runs on half the images
    assert rows["fastcut"]["flops_per_step"] < 0.75 * rows["cut"]["flops_per_step"]
    assert result.stdout.rstrip().splitlines()[-1].startswith("| fastcut | yes |")
    summary = script("benchmark.py", "summary", tmp_path).stdout  # as scripts/gpu_benchmark.sh ends
    assert "Objectives, o (" in summary and summary.rstrip().endswith(result.stdout.rstrip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="the CPU measure reads and resets Linux's RSS high-water mark")
def test_the_memory_measure_sees_a_peak_freed_before_the_end():
    from cyclegan.benchmarks.step import memory_growth_gib

    def transient() -> None:  # 256 MiB touched, then freed
        torch.ones(64 * 2**20).sum()

    assert 0.24 < memory_growth_gib(torch.device("cpu"), transient) < 0.3
    assert memory_growth_gib(torch.device("cpu"), lambda: None) < 0.01  # the high-water mark was reset


@pytest.mark.heavy  # about 20 s of benchmark runs; make test stays within its budget without it
def test_the_sweep_times_each_setting_and_names_the_fastest(tmp_path):
    # on the CPU (on a GPU host too): fp16, a GPU-only setting, is then not tried
    result = run([sys.executable, str(ROOT / "scripts/benchmark.py"), "--json", str(tmp_path / "s.json"), "step",
                  "--size", "32", "--batch", "1", "--steps", "1", "--warmup", "1", "--repeats", "1", "--sweep",
                  "--sweep-axes", "precision,adam", "model.ngf=8", "model.n_blocks=1", "model.ndf=8",
                  "model.n_layers_d=1"], env={"ACCELERATE_USE_CPU": "true"})
    report = json.loads((tmp_path / "s.json").read_text())
    rows = report["rows"]
    assert all("error" not in r and r["seconds_per_step"] > 0 for r in rows), rows
    assert [(r["precision"], r["adam"]) for r in rows[:2]] == [("no", "auto"), ("bf16", "auto")]
    first = min(rows[:2], key=lambda r: r["seconds_per_step"])["precision"]
    assert [(r["precision"], r["adam"]) for r in rows[2:]] == [(first, "foreach"), (first, "for_loop")]
    assert rows[0]["speedup"] == 1 and rows[1]["speedup"] == pytest.approx(
        rows[0]["seconds_per_step"] / rows[1]["seconds_per_step"])
    best = min(rows, key=lambda r: r["seconds_per_step"])
    assert report["fastest_overrides"] == best["overrides"] and result.stdout.rstrip().endswith(
        f"fastest: {best['overrides']}")


def test_a_hint_names_native_bf16_when_training_in_fp32(demo_shards, tmp_path):
    on_cpu = {"ACCELERATE_USE_CPU": "true"}  # on a GPU host too
    fp32 = script("train.py", "--config", "configs/demo.yaml",
                  *tiny(demo_shards, tmp_path / "fp32", "train.max_steps=1", "tracking.mode=disabled"), env=on_cpu)
    bf16 = script("train.py", "--config", "configs/demo.yaml",
                  *tiny(demo_shards, tmp_path / "bf16", "train.max_steps=1", "tracking.mode=disabled",
                        "train.mixed_precision=bf16"), env=on_cpu)
    native = native_bf16(torch.device("cpu"))  # this CPU decides which way the test goes
    assert ("hint: this CPU (" in fp32.stdout and "computes bf16 natively" in fp32.stdout
            and "perf.compile=true" in fp32.stdout) == native
    assert "hint:" not in bf16.stdout, "nothing to suggest when bf16 is already on"


def test_perf_config_is_validated():
    from cyclegan.errors import ConfigError

    with pytest.raises(ConfigError, match="'perf.adam' must be one of"):
        load_config(None, ["perf.adam=sgd"])


def test_networks_compile_to_one_graph_without_breaks():
    import torch
    import torch._dynamo as dynamo

    from cyclegan.models import GeneratorSpec, NLayerDiscriminator, ResnetGenerator

    for net in (ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2)), NLayerDiscriminator(3, 8, 2)):
        explanation = dynamo.explain(net)(torch.randn(1, 3, 32, 32))
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), type(net).__name__


@pytest.mark.heavy  # about 12 s for one fresh process; make test reads the recorded table (tests/test_large_images.py)
def test_the_memory_benchmark_measures_each_combination_and_skips_what_cannot_fit(tmp_path):
    # one fresh process for the 64 px step; the 16384 px one is estimated far beyond this machine: not run
    # config overrides first: the options after them take several values each
    result = run([sys.executable, str(ROOT / "scripts/benchmark.py"), "--json", str(tmp_path / "m.json"), "memory",
                  "model.ngf=8", "model.n_blocks=1", "model.ndf=8", "model.n_layers_d=1", "--size", "64", "16384",
                  "--activation-checkpointing", "all"], env={"ACCELERATE_USE_CPU": "true"})
    small, huge = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert (small["size"], small["checkpointing"], small["precision"]) == (64, "all", "fp32")
    assert small["peak_gib"] > small["baseline_gib"] > 0 and small["seconds_per_step"] > 0
    assert small["estimate_gib"] > small["baseline_gib"]
    assert "peak_gib" not in huge and huge["skipped"].startswith("estimated")
    assert result.stdout.rstrip().splitlines()[-1].startswith("| cyclegan | fp32 | 16384 | all | not run: estimated")
    summary = script("benchmark.py", "summary", tmp_path).stdout
    assert "Large images, m (" in summary and "| cyclegan | fp32 | 64 | all |" in summary
