"""Each convolution of a training step timed alone, in fp32 and in a lower precision: what the
precision gives the convolutions themselves on this machine's kernels."""

from __future__ import annotations

import functools
import statistics
from dataclasses import replace

import torch
from accelerate import Accelerator

from cyclegan.benchmarks.step import PhaseTimer, eager_step
from cyclegan.build import make_accelerator
from cyclegan.config import RunConfig
from cyclegan.hardware import device_name


def conv_calls(accelerator: Accelerator, cfg: RunConfig) -> dict[tuple, dict]:
    """Every convolution one eager training step of `cfg` runs, grouped by what decides its
    kernels: the layer, its input (shape, type, layout: under autocast some layers hand the next
    fp32, others bf16) and which gradients its backward computes (a generator's first convolution
    needs no input gradient on a real image, a discriminator's weights none during the
    generators' update). Counted by hooks on a real step of the objective's networks; the
    anti-aliasing blurs (fixed depthwise filters, `model.antialias`) are functional calls, not
    convolution modules, and are not among them."""
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

    handles = [module.register_forward_pre_hook(functools.partial(record, name.split("_")[0].upper()))
               for name, network in nets.named().items()  # G and D by role: g_ab, g_ba -> G; d_a, d_b -> D
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
