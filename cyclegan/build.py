"""Everything a run is built from: the Accelerator, the networks with their speed switches,
optimizers, image pools, the run's size, and the in-training evaluator. Shared by the
training loop and the benchmark, so that both run exactly the same step.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from accelerate.utils import set_seed

from cyclegan.config import RunConfig
from cyclegan.data.shares import mix_seed
from cyclegan.data.sources import DataSources
from cyclegan.data.stream import epoch_steps
from cyclegan.errors import ConfigError, UserError
from cyclegan.diffaug import DiffAugment
from cyclegan.evaluation import INCEPTION_ENV, Evaluator, load_inception, load_test_split
from cyclegan.io.samples import as_unit
from cyclegan.objectives import objective_for
from cyclegan.optim import StepGuard
from cyclegan.pool import ImagePool
from cyclegan.step import Networks, Optimizers, Pools


def make_accelerator(cfg: RunConfig, log_with: str | None = None) -> Accelerator:
    """The run's Accelerator, seeded: every rank starts from the same weights."""
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    accelerator = Accelerator(
        log_with=log_with,
        project_dir=cfg.output_dir,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimizer step
        kwargs_handlers=[ddp],
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ConfigError(f"this trainer runs on one process or DDP (multi_gpu); {accelerator.distributed_type.value} "
                          "would shard gradients that the optimizer steps read whole: launch without it")
    if cfg.train.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (on the CPU Accelerate would quietly train in "
                          "fp32); use bf16 or no there")
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.perf.cudnn_benchmark
    set_seed(cfg.seed)
    return accelerator


@dataclass(frozen=True)
class Plan:
    """The numbers a run is sized by, derived from the config, the data and the world size."""

    world_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    max_steps: int


def make_plan(cfg: RunConfig, sources: DataSources, world_size: int) -> Plan:
    t = cfg.train
    global_batch = t.batch_size * t.grad_accum * world_size
    per_epoch = epoch_steps(sources, global_batch)
    total = (t.epochs + t.decay_epochs) * per_epoch
    if t.max_steps is not None and t.max_steps > total:  # capping it would end the run early without a word
        raise ConfigError(f"config key 'train.max_steps' ({t.max_steps}) lies beyond the schedule, which ends at step "
                          f"{total} ({t.epochs} + {t.decay_epochs} epochs of {per_epoch} steps): lower it, or "
                          "lengthen the schedule with train.epochs or train.decay_epochs")
    return Plan(world_size, global_batch, per_epoch, total, t.max_steps or total)


def build_networks(cfg: RunConfig) -> Networks:
    """The networks `model.objective` trains, initialised from the run's seed."""
    return objective_for(cfg).build_networks(cfg)


def build_optimizers(nets: Networks, cfg: RunConfig, accelerator: Accelerator) -> Optimizers:
    """One Adam per group of networks the objective steps together, and the guard that steps them."""
    t, impl = cfg.train, cfg.perf.adam
    if impl == "auto":
        impl = "fused"  # also what lets StepGuard skip a step without a host sync
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]

    def adam(names: tuple[str, ...]) -> torch.optim.Adam:
        params = itertools.chain(*(getattr(nets, name).parameters() for name in names))
        return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.adam_eps, **flags)

    guard = StepGuard(accelerator, t.stop_after_nonfinite)
    return Optimizers(**{name: adam(names) for name, names in objective_for(cfg).optimized.items()}, guard=guard)


def build_training(accelerator: Accelerator, cfg: RunConfig) -> tuple[Networks, Optimizers, Pools]:
    """Networks (activation checkpointing, channels_last and compile as asked) and optimizers,
    prepared; this rank's pools."""
    nets = build_networks(cfg)
    named = nets.named()
    for net in named.values():
        if hasattr(net, "recompute"):  # the generators and discriminators; CUT's head is too small to matter
            net.recompute = cfg.perf.activation_checkpointing
        if cfg.perf.channels_last:
            net.to(memory_format=torch.channels_last)
        if cfg.perf.compile:
            net.compile()  # in place: the state_dict keys stay the official ones
    opts = build_optimizers(nets, cfg, accelerator)
    optimizers = opts.named()
    prepared = accelerator.prepare(*named.values(), *optimizers.values())
    rank = accelerator.process_index
    pools = Pools(
        fake_a=ImagePool(cfg.train.pool_size, mix_seed(cfg.seed, rank, "pool_a")),
        fake_b=ImagePool(cfg.train.pool_size, mix_seed(cfg.seed, rank, "pool_b")),
        augment=DiffAugment(cfg.train.diffaug, cfg.train.diffaug_p, mix_seed(cfg.seed, rank, "diffaug"),
                            accelerator.device),
    )
    return (Networks(**dict(zip(named, prepared[:len(named)]))),
            Optimizers(**dict(zip(optimizers, prepared[len(named):])), guard=opts.guard), pools)


def batch_to_device(batch: dict, device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """Batches from the loader (uint8 for 8-bit data, [-1, 1] floats for deeper data) -> [-1, 1]
    floats on the device, in the networks' layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return {k: as_unit(batch[k].to(device, non_blocking=True)).contiguous(memory_format=layout) for k in ("A", "B")}


def make_evaluator(accelerator: Accelerator, cfg: RunConfig, sources: DataSources) -> Evaluator:
    """In-training evaluation: FID/KID when Inception weights are at hand, paired metrics always."""
    e = cfg.eval
    wanted = e.metric in ("fid", "kid")
    have_weights = bool(e.inception_weights or os.environ.get(INCEPTION_ENV))
    features = load_inception(e.inception_weights) if wanted or have_weights else None
    split = load_test_split(sources, cfg.data.crop_size, accelerator.process_index, accelerator.num_processes,
                            e.max_images, (cfg.model.input_nc, cfg.model.output_nc), cfg.data.normalizations)
    evaluator = Evaluator(accelerator, split, features, e.batch_size, e.kid_subsets, e.kid_subset_size)
    if e.metric in ("l1", "psnr", "ssim") and not evaluator.paired:
        raise UserError(f"eval.metric={e.metric} needs a paired test split ({evaluator.pairing})")
    return evaluator
