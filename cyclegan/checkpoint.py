"""Checkpoints: save, rotate, find the newest complete one, and resume from it.

A checkpoint is the folder `checkpoints/step_XXXXXXX/` (named by global optimizer step):

    g_ab.safetensors g_ab.json g_ba.safetensors g_ba.json   the generators, also an export (CUT: g_ab alone)
    g_ab_ema.safetensors ...                                the averaged generators (train.ema_decay)
    d_a.safetensors d_b.safetensors                         the discriminators (CUT: d_b alone)
    f.safetensors                                           CUT's patch head
    optim.pt                                                optimizers, schedulers, scaler, and the counters
                                                            (skipped steps, health streaks) that go on counting
    rank_R.pt                                               rank R's image pools, augmentation and RNG states
                                                            (`cyclegan.rng`), and its position in the data stream
    state.json                                              step, epoch, world size, architecture

Every rank writes into `.step_XXXXXXX.partial/`; after a barrier the main process renames
it. A rename is atomic, so a folder with the final name is always complete, and a save cut
short leaves only a `.partial` folder, which is ignored and cleaned up. Everything is read
back with safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from cyclegan.ema import GeneratorEMA
from cyclegan.metrics import HealthMonitor
from cyclegan.errors import CheckpointError, UserError
from cyclegan.io.files import (atomic_folder, atomic_path, cannot_write, remove_folder, remove_leftovers,
                               replace_folder)
from cyclegan.io.records import read_json, write_json
from cyclegan.models.loading import export_generator, load_into, read_state_dict, save_weights
from cyclegan.rng import restore_rng_state, rng_state
from cyclegan.step import Networks, Optimizers, Pools

STEP_PATTERN = re.compile(r"step_(\d{7})")
# what the architecture record of checkpoints written before a key existed means
MODEL_KEYS_BEFORE = {"objective": "cyclegan", "antialias": False, "init": "normal", "nce_layers": None, "head_nc": None}
INIT_ONLY = ("init", "init_gain")  # how weights start: nothing to a resume, which loads them


@dataclass
class TrainState:
    """What besides tensors a resume needs, and what it must agree with."""

    step: int
    epoch: int
    world_size: int
    num_workers: int
    model: dict
    tracker_run_id: str | None = None
    best: dict | None = None  # {"step", metric: value} of the best evaluation so far
    global_batch: int | None = None  # images per optimizer step: the unit of `step` (None: older checkpoints)
    pool_size: int | None = None  # train.pool_size: images each rank's pools hold (None: older checkpoints)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_PATTERN.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_resume_point(resume: str | None, root: Path) -> Path | None:
    """`auto`: the newest complete checkpoint or None; a path: that checkpoint, which must exist."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"resume={resume} is not a complete checkpoint folder (no state.json in it)")
    return path


@dataclass
class Trained:
    """Everything a checkpoint holds besides the TrainState."""

    nets: Networks
    opts: Optimizers
    schedulers: dict
    pools: Pools
    health: HealthMonitor  # its streaks, with the guard's skipped-step counts, go on counting after a resume
    ema: GeneratorEMA | None = None
    stream: dict | None = None  # this rank's position in the data stream (UnpairedStream.advance)


def save_checkpoint(accelerator: Accelerator, root: Path, state: TrainState, trained: Trained, keep: int,
                    export_ema: bool = True) -> Path:
    """Write one complete checkpoint from every rank, then keep only the newest `keep`.

    A failed write (a full disk, an unwritable folder) removes the partial folder and stops
    the run with a message; the checkpoints already written are left as they were.
    """
    final = step_dir(root, state.step)
    # not `atomic_folder`, whose staging name is unique to one process: every rank writes its own
    # file into this one folder, so all of them need its name without being told it
    partial = root / f".{final.name}.partial"
    broken = non_finite_parts(accelerator, trained.nets, trained.opts)
    if broken:
        raise CheckpointError(
            f"not writing checkpoint {final}: {', '.join(broken)} hold non-finite (NaN or inf) values at step "
            f"{state.step}; {_newest_kept(root)}. Lower train.lr or clip gradients (train.grad_clip), then run "
            "again with resume=auto."
        )
    try:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        pools = trained.pools
        with atomic_path(partial / f"rank_{accelerator.process_index}.pt") as temporary:
            torch.save({"pools": {"fake_a": pools.fake_a.state_dict(), "fake_b": pools.fake_b.state_dict()},
                        "augment": pools.augment.state_dict(), "rng": rng_state(accelerator.device),
                        "stream": trained.stream}, temporary)
        if accelerator.is_main_process:
            _write_shared_files(accelerator, partial, state, trained)
    except (OSError, RuntimeError, UserError) as err:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(partial, ignore_errors=True)
        reason = err if isinstance(err, OSError) else OSError(str(err).splitlines()[0])
        raise CheckpointError(str(cannot_write(final, reason, f"then run again with resume=auto; {_newest_kept(root)}"))) \
            from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(partial, final)
        publish_export(final, root.parent / "export", averaged=trained.ema is not None and export_ema)
        for old in complete_checkpoints(root)[:-keep]:
            remove_folder(old)  # out of sight first, so none is ever seen half removed
    accelerator.wait_for_everyone()
    return final


def _newest_kept(root: Path) -> str:
    previous = complete_checkpoints(root)
    return f"the newest complete checkpoint, {previous[-1]}, is intact" if previous else "no checkpoint exists yet"


def non_finite_parts(accelerator: Accelerator, nets: Networks, opts: Optimizers) -> list[str]:
    """The networks and optimizers holding a NaN or inf on any rank (one device sync, at saves only)."""
    parts = {name: list(accelerator.unwrap_model(net).state_dict().values()) for name, net in nets.named().items()}
    for name, optimizer in opts.named().items():
        parts[f"opt_{name}"] = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    finite = torch.stack([_all_finite(tensors, accelerator.device) for tensors in parts.values()])
    bad = accelerator.reduce((~finite).float(), "sum")
    return [name for name, count in zip(parts, bad.tolist()) if count]


def _all_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    flags = [torch.isfinite(t).all().to(device) for t in tensors if t.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=device)


def _write_shared_files(accelerator: Accelerator, folder: Path, state: TrainState, trained: Trained) -> None:
    """What the main process writes: weights (and averaged generators), optimizer and scheduler
    state, state.json."""
    for name, net in trained.nets.named().items():
        net = accelerator.unwrap_model(net)
        save = export_generator if name.startswith("g_") else save_weights
        save(net, folder / f"{name}.safetensors")
    if trained.ema is not None:
        for name, averaged in trained.ema.models.items():
            export_generator(averaged, folder / f"{name}_ema.safetensors")
    opts = trained.opts
    extra = {**{f"opt_{name}": optimizer.state_dict() for name, optimizer in opts.named().items()},
             "schedulers": {k: s.state_dict() for k, s in trained.schedulers.items()},
             "counters": {"guard": opts.guard.state_dict(), "health": trained.health.state_dict()}}
    if accelerator.scaler is not None:
        extra["scaler"] = accelerator.scaler.state_dict()
    with atomic_path(folder / "optim.pt") as temporary:
        torch.save(extra, temporary)
    write_json(folder / "state.json", state.__dict__)


def publish_export(checkpoint: Path, export: Path, averaged: bool = False) -> None:
    """Refresh `OUTPUT/export/` with the checkpoint's generators (the averaged ones if asked), and
    its state.json (which step and objective, and whether the generators are the averaged ones)."""
    state = read_json(checkpoint / "state.json", error=CheckpointError)
    with atomic_folder(export) as staging:
        for name in ("g_ab", "g_ba")[:2 if (checkpoint / "g_ba.safetensors").is_file() else 1]:
            source = f"{name}_ema" if averaged else name
            for suffix in (".safetensors", ".json"):
                shutil.copy2(checkpoint / f"{source}{suffix}", staging / f"{name}{suffix}")
        write_json(staging / "state.json", {**state, "averaged": averaged})


def keep_best(checkpoint: Path, best: Path, record: dict) -> None:
    """Copy a complete checkpoint to `OUTPUT/best/`, with `best.json` saying why it is best."""
    with atomic_folder(best) as staging:
        shutil.copytree(checkpoint, staging, dirs_exist_ok=True)
        write_json(staging / "best.json", record)


def read_train_state(path: Path) -> TrainState:
    fields = read_json(path / "state.json", error=CheckpointError)
    try:
        return TrainState(**fields)
    except TypeError as err:
        raise CheckpointError(f"{path / 'state.json'}: not a checkpoint's state ({err})") from None


def load_checkpoint(accelerator: Accelerator, path: Path, expected: TrainState, trained: Trained,
                    elastic: bool = False) -> tuple[TrainState, list[str]]:
    """Restore everything `save_checkpoint` wrote; refuse another architecture, and another world
    size or worker count unless `elastic`. Returns the saved state and notes for the user."""
    saved, notes = read_train_state(path), []
    if not isinstance(saved.model, dict):
        raise CheckpointError(f"{path / 'state.json'}: its 'model' is not an object; the checkpoint is damaged")
    saved_model = {**MODEL_KEYS_BEFORE, **saved.model}
    if saved_model["objective"] != expected.model["objective"]:
        raise CheckpointError(
            f"checkpoint {path} was trained with model.objective={saved_model['objective']}; this run asks for "
            f"{expected.model['objective']}. A run keeps its objective: resume with model.objective="
            f"{saved_model['objective']}, or start a new output_dir"
            + (" (init_from=<this run's output_dir> takes its g_ab and d_b, with model.antialias=false)"
               if saved_model["objective"] == "cyclegan" else "")
        )
    if saved.global_batch is not None and saved.global_batch != expected.global_batch:
        raise CheckpointError(
            f"checkpoint {path} was trained with a global batch of {saved.global_batch} images per step; this run "
            f"has {expected.global_batch} (train.batch_size x train.grad_accum x processes). Steps, the schedule and "
            "the data position all count in it: keep it, e.g. by setting train.grad_accum for another number of "
            "processes"
        )
    # older checkpoints name the size only inside their pools
    pool_size = saved.pool_size if saved.pool_size is not None else \
        _torch_load(path / "rank_0.pt")["pools"]["fake_a"]["size"]
    if pool_size != expected.pool_size:
        raise CheckpointError(
            f"checkpoint {path} was trained with train.pool_size={pool_size}; this run has train.pool_size="
            f"{expected.pool_size}. Each rank's image pools are restored whole: resume with train.pool_size="
            f"{pool_size}, or train on with another size from a new output_dir with init_from=<this run's output_dir>"
        )
    if saved.world_size != expected.world_size or saved.num_workers != expected.num_workers:
        if not elastic:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved.world_size} process(es) with data.num_workers="
                f"{saved.num_workers}; this run has {expected.world_size} and {expected.num_workers}. The data "
                "stream is split by both, so resume with the same values, start a new output_dir, or set "
                "resume_elastic=true to go on (no longer bitwise reproducible)."
            )
        notes.append(f"resuming a run of {saved.world_size} process(es) x {saved.num_workers} worker(s) on "
                     f"{expected.world_size} x {expected.num_workers}: the data stream is split anew, image pools "
                     "of ranks that are gone are dropped and new ranks start with empty ones; from here the run "
                     "is no longer bitwise reproducible")
    changed = sorted(k for k in expected.model if saved_model.get(k) != expected.model[k] and k not in INIT_ONLY)
    if changed:
        raise CheckpointError(
            f"checkpoint {path} holds another architecture: "
            + ", ".join(f"model.{k} is {saved_model.get(k)} there, {expected.model[k]} here" for k in changed)
        )
    for name, net in trained.nets.named().items():
        file = path / f"{name}.safetensors"
        load_into(accelerator.unwrap_model(net), read_state_dict(file), file, f"network {name}")
    extra = _torch_load(path / "optim.pt")
    for name, optimizer in trained.opts.named().items():
        optimizer.load_state_dict(extra[f"opt_{name}"])
    for key, scheduler in trained.schedulers.items():
        scheduler.load_state_dict(extra["schedulers"][key])
    if accelerator.scaler is not None and "scaler" in extra:
        accelerator.scaler.load_state_dict(extra["scaler"])
    if "counters" in extra:  # older checkpoints: the counts start again from zero
        trained.opts.guard.load_state_dict(extra["counters"]["guard"])
        trained.health.load_state_dict(extra["counters"]["health"])
    if trained.ema is not None:
        notes += _load_ema(accelerator, path, trained)
    elif (path / "g_ab_ema.safetensors").is_file():
        notes.append(f"checkpoint {path} holds averaged generators, but train.ema_decay is 0: they are left behind, "
                     "and exports are the trained weights from here")
    if accelerator.process_index < saved.world_size:  # a rank new to an elastic resume starts afresh
        mine = _torch_load(path / f"rank_{accelerator.process_index}.pt")
        _load_rank_file(accelerator, mine, trained.pools)
        trained.stream = mine.get("stream")  # None from older checkpoints: lanes then assume no corrupt sample came before
    return saved, notes


def _load_ema(accelerator: Accelerator, path: Path, trained: Trained) -> list[str]:
    files = {name: path / f"{name}_ema.safetensors" for name in trained.ema.models}
    if all(f.is_file() for f in files.values()):
        for name, file in files.items():
            load_into(trained.ema.models[name], read_state_dict(file), file, f"averaged {name}")
        return []
    trained.ema.load_state_dict({name: accelerator.unwrap_model(getattr(trained.nets, name)).state_dict()
                                 for name in trained.ema.models})
    return [f"checkpoint {path} holds no averaged generators: the average starts from its weights"]


def _load_rank_file(accelerator: Accelerator, mine: dict, pools: Pools) -> None:
    """This rank's pools, augmentation dice and RNG states."""
    pools.fake_a.load_state_dict(mine["pools"]["fake_a"])
    pools.fake_b.load_state_dict(mine["pools"]["fake_b"])
    pools.fake_a.to(accelerator.device)
    pools.fake_b.to(accelerator.device)
    if "augment" in mine:
        pools.augment.load_state_dict(mine["augment"])
    restore_rng_state(mine["rng"], accelerator.device)


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds for damaged files
        raise CheckpointError(f"checkpoint file {path} cannot be read ({str(err).splitlines()[0]})") from None


def clean_partial(root: Path) -> None:
    """Remove leftovers of saves that were cut short: checkpoints, and refreshes of export/ and best/."""
    if root.is_dir():
        remove_leftovers(root)
        remove_leftovers(root.parent)
