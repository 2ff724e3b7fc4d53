"""The training loop: Accelerator setup, networks, resume, then optimizer steps over the stream.

The loop counts optimizer steps over an endless stream; epochs only size the learning-rate
schedule and name the data order. Nothing reads a device value except at logging steps.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from cyclegan.build import batch_to_device, build_training, make_accelerator, make_evaluator, make_plan
from cyclegan.checkpoint import (
    Trained,
    TrainState,
    clean_partial,
    complete_checkpoints,
    find_resume_point,
    keep_best,
    load_checkpoint,
    save_checkpoint,
    step_dir,
)
from cyclegan.config import RunConfig, save_config
from cyclegan.data.sources import check_samples, find_sources
from cyclegan.data.stream import UnpairedStream, train_loader
from cyclegan.errors import ConfigError, UserError
from cyclegan.evaluation import LOWER_IS_BETTER, headline
from cyclegan.ema import GeneratorEMA
from cyclegan.grids import fixed_test_images, sample_grids
from cyclegan.hardware import describe_bf16, native_bf16
from cyclegan.io.records import write_json
from cyclegan.memory import memory_refusal
from cyclegan.metrics import HealthMonitor, MetricWindow
from cyclegan.schedule import continue_schedule, make_scheduler
from cyclegan.objectives import objective_for
from cyclegan.stopping import StopRequest
from cyclegan.tracking import RunLog, describe_run, new_run_id, tracker_name, writing
from cyclegan.warmstart import warm_start


def weight_checksum(net: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, bit for bit."""
    digest = hashlib.sha256()
    for tensor in net.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train(cfg: RunConfig) -> Path:
    """Train as configured; return the run folder."""
    return Trainer(cfg).run()


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.acc = acc = make_accelerator(cfg, log_with=tracker_name(cfg.tracking))
        # before any work: a step that cannot fit stops here, on every rank if on one (GPUs' free memory differs)
        refusals = [r for r in gather_object([memory_refusal(cfg, acc.device)]) if r]
        if refusals:
            raise ConfigError(refusals[0])
        self.sources = find_sources(cfg.data)
        for warning in check_samples(self.sources, (cfg.model.input_nc, cfg.model.output_nc), cfg.data.normalizations):
            acc.print(f"warning: {warning}")
        self.plan = make_plan(cfg, self.sources, acc.num_processes)
        self.output = Path(cfg.output_dir)
        self.ckpt_root = self.output / "checkpoints"
        self.objective = objective_for(cfg)
        self.nets, self.opts, self.pools = build_training(acc, cfg)
        p = self.plan
        self.schedulers = {name: make_scheduler(opt.optimizer, p.steps_per_epoch, cfg.train.epochs, cfg.train.decay_epochs)
                           for name, opt in self.opts.named().items()}
        ema = GeneratorEMA(self.trained_generators(), cfg.train.ema_decay, acc.device) if cfg.train.ema_decay else None
        self.health = HealthMonitor(cfg.tracking.warn_identity_change, cfg.tracking.warn_d_accuracy)
        self.trained = Trained(self.nets, self.opts, self.schedulers, self.pools, self.health, ema)
        self.state = TrainState(0, 0, acc.num_processes, cfg.data.num_workers, asdict(cfg.model),
                                global_batch=self.plan.global_batch, pool_size=cfg.train.pool_size)
        self.stop = StopRequest(acc)
        self.evaluator = make_evaluator(acc, cfg, self.sources) if cfg.eval.every else None

    def trained_generators(self) -> dict[str, torch.nn.Module]:
        return {name: self.acc.unwrap_model(net) for name, net in self.nets.generators().items()}

    def generators(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The generators grids and evaluation show: the averaged ones when train.ema_decay is on;
        g_ba is None for an objective that has no B -> A generator."""
        models = self.trained.ema.models if self.trained.ema is not None else self.trained_generators()
        return models["g_ab"], models.get("g_ba")

    def resume(self) -> None:
        """From the newest checkpoint (resume), or else from weights only (init_from)."""
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            clean_partial(self.ckpt_root)
        acc.wait_for_everyone()
        point = find_resume_point(cfg.resume, self.ckpt_root)
        if point is not None:
            self.state, notes = load_checkpoint(acc, point, self.state, self.trained, cfg.resume_elastic)
            self.state.world_size, self.state.num_workers = acc.num_processes, cfg.data.num_workers
            self.state.global_batch, self.state.pool_size = self.plan.global_batch, cfg.train.pool_size
            if cfg.init_from:
                notes.append(f"init_from={cfg.init_from} is not used: the run resumes")
            for note in notes:
                acc.print(f"note: {note}")
            acc.print(f"resumed from {point} at step {self.state.step}")
            self.continue_schedules()
        elif cfg.init_from:
            if complete_checkpoints(self.ckpt_root):
                raise UserError(f"init_from={cfg.init_from}: {self.output} already holds checkpoints of another run; "
                                "choose a new output_dir, or resume=auto to go on with them")
            acc.print(warm_start(acc, Path(cfg.init_from), self.nets, cfg.model.norm, self.trained.ema))

    def continue_schedules(self) -> None:
        """A resumed run with a longer schedule goes on without a jump."""
        t, step = self.cfg.train, self.state.step
        changed = [continue_schedule(s, self.plan.steps_per_epoch, t.epochs, t.decay_epochs, step)
                   for s in self.schedulers.values()]
        if any(changed):
            scheduler = self.schedulers["g"]
            rate, end = scheduler.lr_lambdas[0](step) * scheduler.base_lrs[0], self.plan.total_steps
            self.acc.print(f"note: the schedule changed: the learning rate goes on from {rate:.3g} at step {step} "
                           + (f"along the new one, reaching zero at step {end}" if end > step else
                              f"but the new schedule ended at step {end}: nothing is left to train"))

    def announce(self) -> None:
        p, t = self.plan, self.cfg.train
        self.acc.print(
            f"global batch {p.global_batch} = {t.batch_size} per device x {t.grad_accum} accumulation x "
            f"{p.world_size} process(es); {p.steps_per_epoch} steps per epoch; "
            f"training to step {p.max_steps} of {p.total_steps}; output in {self.output}"
        )
        if t.mixed_precision == "no" and native_bf16(self.acc.device):
            self.acc.print(f"hint: {describe_bf16(self.acc.device)} computes bf16 natively; train.mixed_precision=bf16 "
                           "is often faster here, with perf.compile=true too for long runs (python "
                           "scripts/benchmark.py step --sweep measures it). The default stays fp32: bf16 changes "
                           "results by its rounding")

    def run(self) -> Path:
        cfg, acc, plan = self.cfg, self.acc, self.plan
        self.resume()  # first: a refused resume leaves the run folder as it was
        if self.state.step >= plan.max_steps:  # every rank resumed the same step: all return here
            acc.print(f"done at step {self.state.step}: the run was complete already (train.max_steps "
                      f"{plan.max_steps}), nothing to do; its generators are in {self.output / 'export'}")
            acc.end_training()
            return self.output
        if acc.is_main_process:
            with writing(self.output / "config.yaml"):
                self.output.mkdir(parents=True, exist_ok=True)
                save_config(cfg, self.output / "config.yaml")
        self.announce()
        if self.state.tracker_run_id is None and acc.is_main_process:
            self.state.tracker_run_id = new_run_id()
        images = {name: shards.samples for name, shards in vars(self.sources).items() if shards is not None}
        run_config = describe_run(cfg, plan.world_size, plan.global_batch, images)
        if acc.is_main_process:
            with writing(self.output / "run.json"):
                write_json(self.output / "run.json", run_config)
        self.log = RunLog(acc, cfg, self.state.step, self.state.tracker_run_id, run_config)
        self.last_values: dict[str, float] = {}
        self.grid_images = fixed_test_images(self.sources, cfg) if acc.is_main_process else None
        self.saved_at = self.state.step
        self.loop()
        if self.saved_at != self.state.step:
            self.checkpoint()
        self.check_ranks_agree()
        self.log.summary({**self.last_values, "final_step": self.state.step})
        if self.stop.requested:
            acc.print(f"stopped at step {self.state.step} ({self.stop.requested}); "
                      "the checkpoint is complete: run again with resume=auto to continue")
        else:
            acc.print(f"done at step {self.state.step}; generators exported to {self.output / 'export'}")
        acc.end_training()
        return self.output

    def loop(self) -> None:
        """Optimizer steps until max_steps, or until every rank agrees to stop early."""
        cfg, acc, plan = self.cfg, self.acc, self.plan
        stream = UnpairedStream(self.sources, cfg.data, cfg.train.batch_size, plan.steps_per_epoch * cfg.train.grad_accum,
                                cfg.seed, acc.process_index, acc.num_processes, (cfg.model.input_nc, cfg.model.output_nc))
        loader = train_loader(stream, pin_memory=acc.device.type == "cuda")
        window = MetricWindow(acc.device, self.objective.log_names())
        with tqdm(total=plan.max_steps, initial=self.state.step, desc="train", unit="step",
                  disable=not acc.is_main_process, dynamic_ncols=True) as bar:
            while self.state.step < plan.max_steps:
                self.state.epoch, offset = divmod(self.state.step * cfg.train.grad_accum,
                                                  plan.steps_per_epoch * cfg.train.grad_accum)
                stream.set_epoch(self.state.epoch, offset, self.trained.stream)
                batches = iter(loader)
                try:
                    waited = time.perf_counter()
                    for batch in batches:
                        self.trained.stream = stream.advance(self.trained.stream, batch)
                        wait = time.perf_counter() - waited
                        on_device = batch_to_device(batch, acc.device, cfg.perf.channels_last)
                        result = self.objective.train_step(acc, self.nets, self.opts, self.pools, on_device, cfg,
                                                           self.state.step)
                        window.add(result, int(batch["skipped"].sum()), wait)
                        if acc.sync_gradients:
                            self.after_step(window, bar)
                            if self.state.step >= plan.max_steps or self.stop.should_stop():
                                return
                        waited = time.perf_counter()
                finally:
                    # Shut the workers down now: an error from a worker keeps the iterator alive in its
                    # traceback, and the workers would outlive the training process's exit.
                    getattr(batches, "_shutdown_workers", lambda: None)()

    def after_step(self, window: MetricWindow, bar: tqdm) -> None:
        """Everything between two optimizer steps, in this order: the schedules and the step count,
        logging, sample grids, evaluation, checkpoints and the rank check."""
        used_lr = self.schedule_step()
        bar.update(1)
        if self.due(self.cfg.tracking.log_every, final=True):
            self.log_step(window, used_lr, bar)
        if self.grid_images is not None and self.due(self.cfg.tracking.image_every, final=True):
            self.draw_grids()
        if self.evaluator is not None and self.due(self.cfg.eval.every, final=True):
            self.evaluate()
        if self.due(self.cfg.train.checkpoint_every) and self.saved_at != self.state.step:
            self.checkpoint()
        if self.due(self.cfg.train.check_ranks_every):
            self.check_ranks_agree()

    def due(self, every: int, final: bool = False) -> bool:
        """Whether a task done every `every` steps (0: never) falls on this step; `final`: the last step too."""
        step = self.state.step
        return (every > 0 and step % every == 0) or (final and step == self.plan.max_steps)

    def schedule_step(self) -> dict[str, float]:
        """Step the schedules, the step count and the averaged generators; returns the learning rates
        the step just taken was taken with."""
        used_lr = {name: scheduler.get_last_lr()[0] for name, scheduler in self.schedulers.items()}
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.state.step += 1
        if self.trained.ema is not None:
            self.trained.ema.update(self.trained_generators(), self.state.step)
        return used_lr

    def log_step(self, window: MetricWindow, used_lr: dict[str, float], bar: tqdm) -> None:
        """Read the window (the one device sync of a logging step) and log it; stop after a run of
        non-finite steps; print the health warnings that fell due."""
        values = window.read(self.acc, self.plan.global_batch)
        values.update({f"lr/{name}": rate for name, rate in used_lr.items()})
        values["epoch"] = self.state.epoch
        skipped, stop_after = self.opts.guard.read()
        values.update(skipped)
        if torch.cuda.is_available():
            values["perf/max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.log.scalars(self.state.step, values)
        if stop_after:
            raise UserError(self.nonfinite_message(stop_after))
        for warning in self.health.check(values):
            self.acc.print(warning)
        self.last_values = values
        bar.set_postfix(g=f"{sum(v for k, v in values.items() if k.startswith('loss/adv_')):.3f}",
                        d=f"{sum(values.get(f'loss/{d}', 0.0) for d in ('d_a', 'd_b')):.3f}",
                        img_s=f"{values['perf/images_per_s']:.1f}")
        window.reset()

    def draw_grids(self) -> None:
        """Sample grids of the fixed test images, from the generators grids show."""
        grids = sample_grids(self.acc, *self.generators(), self.grid_images, self.cfg.tracking.display_bands)
        self.log.images(self.state.step, grids)

    def nonfinite_message(self, in_a_row: int) -> str:
        saved = complete_checkpoints(self.ckpt_root)
        where = f"the newest checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
        fp16 = " (under fp16, overflows of the loss scale count too)" if self.acc.scaler is not None else ""
        return (f"stopped at step {self.state.step}: {in_a_row} optimizer step(s) in a row had non-finite (NaN or inf) "
                f"gradients{fp16} and were skipped on every rank; {where} (checkpoints never hold NaN or inf). Lower "
                "train.lr, clip gradients (train.grad_clip) or use bf16 instead of fp16, and resume with resume=auto.")

    def evaluate(self) -> None:
        """Score the test split; a new best is checkpointed and copied to best/."""
        acc, step, metric = self.acc, self.state.step, self.cfg.eval.metric
        results = self.evaluator(*self.generators())
        self.log.scalars(step, {f"eval/{k}": v for k, v in results.items()})
        score = headline(results, metric)
        previous = self.state.best[metric] if self.state.best else None
        if previous is None or (score < previous if LOWER_IS_BETTER[metric] else score > previous):
            self.state.best = {"step": step, metric: score}
            if self.saved_at != step:
                self.checkpoint()
            if acc.is_main_process:
                keep_best(step_dir(self.ckpt_root, step), self.output / "best", {**self.state.best, "results": results})
            acc.wait_for_everyone()

    def check_ranks_agree(self) -> None:
        """Gather every rank's weight checksums, write them to checksums.json, fail if they differ.

        DDP keeps replicas bitwise equal; any difference is a silent bug, caught here loudly.
        """
        mine = {name: weight_checksum(self.acc.unwrap_model(net)) for name, net in self.nets.named().items()}
        if self.trained.ema is not None:
            mine |= {f"{name}_ema": weight_checksum(model) for name, model in self.trained.ema.models.items()}
        every = gather_object([mine])
        if self.acc.is_main_process:
            write_json(self.output / "checksums.json", {"step": self.state.step, "ranks": every})
        differing = [name for name in mine if len({sums[name] for sums in every}) > 1]
        if differing:
            raise RuntimeError(f"ranks hold different weights for {', '.join(differing)} at step {self.state.step}: "
                               f"the DDP replicas diverged (checksums in {self.output / 'checksums.json'})")

    def checkpoint(self) -> None:
        self.saved_at = self.state.step
        save_checkpoint(self.acc, self.ckpt_root, self.state, self.trained, self.cfg.train.keep_checkpoints,
                        self.cfg.train.export_ema)
