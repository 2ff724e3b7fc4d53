"""What a training step needs in memory, estimated before the run, and the budget it must fit.

The estimate is the memory before the networks exist (the process's resident set on a CPU;
nothing on a GPU, whose count is PyTorch's allocated tensors), plus the networks' state (weights,
gradients, Adam's two moments, the EMA copy) and the image pools, plus activations: bytes per
pixel of the batch, measured for the paper's networks of each objective at each precision and
checkpointing level (`scripts/benchmark.py memory`, docs/benchmarks.md) and scaled by the
activation values per pixel the run's networks keep at that level against those. Without running a step, a run that cannot fit
stops at once, with what would make it fit.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch

from cyclegan.models.recompute import LEVELS, recomputed

if TYPE_CHECKING:
    from cyclegan.config import RunConfig

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[+]?[0-9]+)?)\s*([a-z]*)\s*$")


def parse_size(text: str) -> int:
    """'24GiB', '500MB', '8e9' -> bytes."""
    match = _SIZE.match(str(text).lower())
    value = float(match.group(1)) * _UNITS.get(match.group(2), 0) if match else 0.0
    if not 0 < value < 2**80:  # no unit known, nothing, or beyond any machine (1e400 is infinite)
        raise ValueError(f"not a size: {text!r} (e.g. 24GiB, 500MB, 8e9)")
    return int(value)


def memory_budget_ok(budget: str | None) -> bool:
    """Whether `perf.memory_budget` reads: null, off, or a size."""
    if budget is None or str(budget).lower() == "off":
        return True
    try:
        return parse_size(budget) > 0
    except ValueError:
        return False


def gib(n: float) -> str:
    """Bytes as the messages show them."""
    return f"{n / 2**30:.1f} GiB"


def free_bytes(device: torch.device) -> int:
    """Memory this process can still take: on a GPU counting PyTorch's cached blocks, on the CPU
    within the container's (cgroup's) limit too."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    free = psutil.virtual_memory().available
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    if limit.is_file() and used.is_file() and limit.read_text().strip() != "max":
        free = min(free, int(limit.read_text()) - int(used.read_text()))
    return free


def resident_bytes() -> int:
    """This process's resident set now."""
    return psutil.Process().memory_info().rss


# Activation bytes per pixel of the batch (batch x crop x crop) at a training step's peak, for
# the paper's networks of each objective (9 blocks, ngf = ndf = 64, RGB): by objective, precision
# (train.mixed_precision) and perf.activation_checkpointing. Fitted to the peaks measured on a CPU
# (docs/benchmarks.md, "Large images"); fp16 taken as bf16.
BYTES_PER_PIXEL: dict[tuple[str, str], dict[str, int]] = {  # (objective, precision) -> level -> bytes
    ("cyclegan", "no"): {"none": 37270, "blocks": 21660, "all": 10720},
    ("cyclegan", "bf16"): {"none": 20420, "blocks": 9020, "all": 3730},
    ("cut", "no"): {"none": 31610, "blocks": 22110, "all": 9810},
    ("cut", "bf16"): {"none": 22560, "blocks": 16980, "all": 7580},
    ("fastcut", "no"): {"none": 18330, "blocks": 14000, "all": 6620},
    ("fastcut", "bf16"): {"none": 14030, "blocks": 10900, "all": 4660},
}


def state_bytes(cfg: RunConfig, steps: int | None = None) -> int:
    """What the step holds beside its activations: the networks' weights, gradients and Adam's two
    moments (fp32 whatever the precision: autocast keeps fp32 weights), the EMA's copy of the
    generators, and the image pools' translations (on the device, fp32 at most): full, or after
    `steps` steps."""
    total, generators, _ = _network_figures(_model_key(cfg))
    m, t, side = cfg.model, cfg.train, cfg.data.crop_size
    pooled = t.pool_size if steps is None else min(t.pool_size, steps * t.batch_size)
    pools = pooled * (m.input_nc + m.output_nc) * side * side
    return 4 * (4 * total + (generators if cfg.train.ema_decay else 0) + pools)


def kept_values_per_pixel(cfg: RunConfig) -> float:
    """Activation values that one pass through each generator and discriminator keeps for the
    backward pass at `cfg`'s checkpointing level, per input pixel: every module's output outside
    the recomputed stages, and the input of each recomputed stage. What the activations scale
    with from one network layout to another."""
    return _network_figures(_model_key(cfg))[2][cfg.perf.activation_checkpointing]


def _model_key(cfg: RunConfig) -> str:
    return json.dumps(asdict(cfg.model), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _network_figures(model: str) -> tuple[int, int, dict[str, float]]:
    """Parameters of all networks and of the generators, and the values kept per pixel at each
    checkpointing level, of the networks `model` (a ModelConfig as JSON) describes; built and run
    on the meta device, so at once."""
    from cyclegan.config import RunConfig as Fresh
    from cyclegan.objectives import objective_for

    cfg = Fresh()
    cfg = replace(cfg, model=replace(cfg.model, **json.loads(model)))
    with torch.device("meta"):
        nets = objective_for(cfg).build_networks(cfg)
    total = sum(p.numel() for net in nets.named().values() for p in net.parameters())
    generators = sum(p.numel() for net in nets.generators().values() for p in net.parameters())
    size = max(64, 2 ** (cfg.model.n_layers_d + 4))  # a discriminator's last map keeps a few pixels
    kept = dict.fromkeys(LEVELS, 0)
    for name, net in nets.named().items():
        if name == "f":  # CUT's head sees a few hundred patches, not the image
            continue
        inputs, outputs = [0] * len(net.model), [0] * len(net.model)  # by position in `model`
        handles = []
        for position, module in enumerate(net.model):
            handles.append(module.register_forward_pre_hook(
                lambda module, args, position=position: inputs.__setitem__(position, args[0].numel())))
            for leaf in module.modules():
                if not list(leaf.children()):
                    handles.append(leaf.register_forward_hook(
                        lambda leaf, args, out, position=position: outputs.__setitem__(
                            position, outputs[position] + out.numel())))
        channels = cfg.model.input_nc if name in ("g_ab", "d_a") else cfg.model.output_nc
        with torch.no_grad():
            net(torch.zeros(1, channels, size, size, device="meta"))
        for handle in handles:
            handle.remove()
        for level in LEVELS:
            kept[level] += sum(inputs[stage.start] if recomputed(stage, level) else sum(outputs[stage.start:stage.stop])
                               for stage in net.stages)
    return total, generators, {level: values / size**2 for level, values in kept.items()}


def measured_networks(cfg: RunConfig) -> RunConfig:
    """`cfg` with the networks the per-pixel figures were measured on: the paper's, in each
    objective's default layout (CycleGAN plain, CUT and FastCUT anti-aliased)."""
    paper = {"input_nc": 3, "output_nc": 3, "ngf": 64, "ndf": 64, "n_blocks": 9, "n_layers_d": 3,
             "norm": "instance", "dropout": False, "antialias": cfg.model.objective != "cyclegan"}
    return replace(cfg, model=replace(cfg.model, **paper))


def precision_key(cfg: RunConfig) -> str:
    """The row of BYTES_PER_PIXEL a precision reads (fp16 takes bf16's: two bytes a value too)."""
    return "no" if cfg.train.mixed_precision == "no" else "bf16"


def estimate_step_bytes(cfg: RunConfig, baseline: int, steps: int | None = None) -> int:
    """The peak memory of a training step of `cfg` on one device, before running it: `baseline` (what
    the process holds before the networks exist), their state and the activations of
    `train.batch_size` crops; with full image pools, or as after `steps` steps (the benchmark's)."""
    per_pixel = BYTES_PER_PIXEL[cfg.model.objective, precision_key(cfg)][cfg.perf.activation_checkpointing]
    scale = kept_values_per_pixel(cfg) / kept_values_per_pixel(measured_networks(cfg))
    pixels = cfg.train.batch_size * cfg.data.crop_size**2
    return int(baseline + state_bytes(cfg, steps) + pixels * per_pixel * scale)


def budget_bytes(budget: str | None, device: torch.device) -> int | None:
    """`perf.memory_budget` in bytes; None where nothing is to be checked (off, or unset on a CPU)."""
    if budget is not None:
        return None if str(budget).lower() == "off" else parse_size(budget)
    return free_bytes(device) if device.type == "cuda" else None


def baseline_bytes(device: torch.device) -> int:
    """What the estimate starts from: the process's resident set on a CPU, PyTorch's allocated
    tensors on a GPU."""
    return resident_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)


def _with(cfg: RunConfig, **changes: object) -> RunConfig:
    """`cfg` with some keys changed; another objective comes with its own defaults (as
    `model.objective=...` alone would give), on networks of the same size."""
    from cyclegan.config import load_config

    if "objective" in changes:
        m, shape = cfg.model, ("input_nc", "output_nc", "ngf", "ndf", "n_blocks", "n_layers_d", "norm", "dropout")
        fresh = load_config(None, [f"model.objective={changes.pop('objective')}",
                                   *(f"model.{key}={getattr(m, key)}" for key in shape)])
        cfg = replace(cfg, model=fresh.model)
    sections = {"mixed_precision": "train", "batch_size": "train", "activation_checkpointing": "perf",
                "crop_size": "data"}
    for key, value in changes.items():
        section = sections[key]
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: value})})
    return cfg


def largest_crop(cfg: RunConfig, baseline: int, budget: int, step: int = 32, limit: int = 16384) -> int:
    """The largest crop (a multiple of `step`) whose step fits `budget`; 0 when none does."""
    low, high = 0, limit // step  # in units of step: low fits (or is 0), high + 1 does not
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_step_bytes(_with(cfg, crop_size=middle * step), baseline) <= budget:
            low = middle
        else:
            high = middle - 1
    return low * step


def largest_batch(cfg: RunConfig, baseline: int, budget: int, limit: int = 4096) -> int:
    """The largest batch whose step fits `budget` (0: not even one image)."""
    fixed = estimate_step_bytes(_with(cfg, batch_size=0), baseline)
    per_image = estimate_step_bytes(_with(cfg, batch_size=1), baseline) - fixed
    return max(0, min(limit, (budget - fixed) // max(per_image, 1)))


def ways_to_fit(cfg: RunConfig, baseline: int, budget: int) -> list[str]:
    """What brings the estimate within `budget`, each with its estimate: each change of the network
    pass that fits alone (checkpointing, bf16, FastCUT); failing all, the fewest of them that fit
    together; then a smaller batch and a smaller crop."""
    m, t, p = cfg.model, cfg.train, cfg.perf
    kinds: list[list[tuple[str, dict]]] = []  # each kind's changes, weakest first
    if p.activation_checkpointing != "all" and m.norm != "batch":  # batch norm is refused with it
        levels = ("blocks", "all")[("none", "blocks").index(p.activation_checkpointing):]
        kinds.append([(f"perf.activation_checkpointing={level}", {"activation_checkpointing": level})
                      for level in levels])
    if t.mixed_precision == "no":
        kinds.append([("train.mixed_precision=bf16", {"mixed_precision": "bf16"})])
    if m.objective != "fastcut" and m.input_nc == m.output_nc:  # FastCUT translates within one channel count
        kinds.append([("model.objective=fastcut", {"objective": "fastcut"})])

    def fitting(text: str, change: dict) -> str | None:
        need = estimate_step_bytes(_with(cfg, **change), baseline)
        return f"{text} ({gib(need)})" if need <= budget else None

    ways = [way for kind in kinds for text, change in kind if (way := fitting(text, change))]
    if not ways:  # the strongest of each kind, two kinds at once, then all of them
        strongest = [kind[-1] for kind in kinds]
        for group in [*itertools.combinations(strongest, 2), *([tuple(strongest)] if len(strongest) > 2 else [])]:
            text = " + ".join(text for text, _ in group)
            if way := fitting(text, {k: v for _, change in group for k, v in change.items()}):
                ways.append(way)
                break
    if t.batch_size > 1 and (batch := largest_batch(cfg, baseline, budget)) >= 1:
        need = estimate_step_bytes(_with(cfg, batch_size=batch), baseline)
        ways.append(f"train.batch_size={batch} ({gib(need)}; raise train.grad_accum to keep the batch)")
    if (crop := largest_crop(cfg, baseline, budget)) >= 32:
        ways.append(f"data.crop_size={crop} ({gib(estimate_step_bytes(_with(cfg, crop_size=crop), baseline))})")
    return ways


def memory_refusal(cfg: RunConfig, device: torch.device) -> str | None:
    """Why a step of `cfg` will not fit `perf.memory_budget` on `device`, with what would fit; None
    when it fits or nothing is to be checked."""
    budget = budget_bytes(cfg.perf.memory_budget, device)
    if budget is None:
        return None
    baseline = baseline_bytes(device)
    need = estimate_step_bytes(cfg, baseline)
    if need <= budget:
        return None
    ways = ways_to_fit(cfg, baseline, budget)
    advice = f"it fits with {', or '.join(ways)}" if ways else "nothing here fits: give a larger budget or a smaller network"
    return (f"a training step of {cfg.model.objective} at data.crop_size={cfg.data.crop_size}, "
            f"train.batch_size={cfg.train.batch_size} needs about {gib(need)}, over perf.memory_budget "
            f"({gib(budget)}): {advice} (perf.memory_budget=off skips this check)")
