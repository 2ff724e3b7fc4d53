"""Starting a run from weights only (`init_from`): the optimizers, schedule, pools and step start
fresh. The answer to "I trained 200 epochs, how do I train 200 more with the rate from the start"
(a run stopped before its schedule ended can instead go on along a longer one: raise
train.epochs or train.decay_epochs and resume).

Takes an official CycleGAN checkpoint folder (`latest_net_G_A.pth`, `latest_net_G_B.pth`,
`latest_net_D_A.pth`, `latest_net_D_B.pth`; the official D_A judges domain B images, so it
becomes our `d_b`), an official CUT one (`latest_net_G.pth`, `latest_net_D.pth`, `latest_net_F.pth`),
one of our export folders (generators only: the discriminators start fresh), one of our
checkpoint folders, or a run folder (its newest checkpoint). Each network this run trains takes
the file of its role where the source has one, and starts fresh otherwise; the generators must be
there. So a CUT run can start from a CycleGAN run's g_ab and d_b (its patch head fresh); a CycleGAN
run cannot start from a CUT run, which has no g_ba.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from cyclegan.checkpoint import complete_checkpoints
from cyclegan.ema import GeneratorEMA
from cyclegan.errors import CheckpointError
from cyclegan.models.generator import GeneratorSpec
from cyclegan.models.loading import infer_generator_spec, load_into, read_state_dict, without_legacy_norm_stats
from cyclegan.step import NETWORK_ORDER, Networks

OFFICIAL_FILES = {"g_ab": "latest_net_G_A.pth", "g_ba": "latest_net_G_B.pth",
                  "d_b": "latest_net_D_A.pth", "d_a": "latest_net_D_B.pth"}
OFFICIAL_CUT_FILES = {"g_ab": "latest_net_G.pth", "d_b": "latest_net_D.pth", "f": "latest_net_F.pth"}
OUR_FILES = {name: f"{name}.safetensors" for name in NETWORK_ORDER}


def weights_folder(source: Path) -> Path:
    """The folder holding the weights: a run folder's newest checkpoint, or the folder itself."""
    if not source.is_dir():
        raise CheckpointError(f"init_from={source} is not a folder: give a run, checkpoint, export or official "
                              "checkpoint folder")
    if (source / "checkpoints").is_dir() and complete_checkpoints(source / "checkpoints"):
        return complete_checkpoints(source / "checkpoints")[-1]
    return source / "export" if (source / "export").is_dir() else source


def check_generator(state: dict, path: Path, spec: GeneratorSpec) -> None:
    """A clear word when the weights translate other channel counts than this config's networks,
    or have the other layout (anti-aliased or not)."""
    found = infer_generator_spec(state, path)
    if (found.in_channels, found.out_channels) != (spec.in_channels, spec.out_channels):
        raise CheckpointError(f"init_from: {path} translates {found.in_channels} -> {found.out_channels} channels, this "
                              f"config {spec.in_channels} -> {spec.out_channels}: set model.input_nc="
                              f"{found.in_channels} model.output_nc={found.out_channels}")
    if found.antialias != spec.antialias:
        raise CheckpointError(f"init_from: {path} is {'' if found.antialias else 'not '}anti-aliased (the official CUT "
                              f"layout), this config's generator is {'' if spec.antialias else 'not'}: set "
                              f"model.antialias={str(found.antialias).lower()}")


def warm_start(accelerator: Accelerator, source: Path, nets: Networks, norm: str, ema: GeneratorEMA | None) -> str:
    """Load what `source` holds into `nets` and the average (its averaged generators where it has
    them, else the generators); every rank reads the same files. Returns a line for the log."""
    folder = weights_folder(source)
    files = next((f for f in (OFFICIAL_FILES, OFFICIAL_CUT_FILES) if (folder / f["g_ab"]).is_file()), OUR_FILES)
    ours = nets.named()
    missing = {name: files.get(name, f"{name}.safetensors") for name in nets.generators()}
    missing = {name: file for name, file in missing.items() if not (folder / file).is_file()}
    if missing:
        raise CheckpointError(f"init_from={source}: {folder} holds no weights for this run's generator "
                              f"{' and '.join(missing)} (no {' or '.join(missing.values())}); a CycleGAN run starts "
                              "both of its generators (A -> B and B -> A) from them, and a CUT folder holds A -> B alone")
    loaded = []
    for name, net in ours.items():
        path = folder / files.get(name, f"{name}.safetensors")
        if path.is_file():
            state = read_state_dict(path)
            state = without_legacy_norm_stats(state) if norm == "instance" else state
            if name.startswith("g_"):
                check_generator(state, path, accelerator.unwrap_model(net).spec)
            load_into(accelerator.unwrap_model(net), state, path, f"network {name} of this config")
            loaded.append(name)
    if ema is not None:
        for name, averaged in ema.models.items():
            file = folder / f"{name}_ema.safetensors"
            state = read_state_dict(file) if file.is_file() else accelerator.unwrap_model(getattr(nets, name)).state_dict()
            load_into(averaged, state, file, f"averaged {name}")
    fresh = [name for name in ours if name not in loaded]
    verb = "starts" if len(fresh) == 1 else "start"
    return (f"initialised {', '.join(loaded)} from {folder}" + (f"; {' and '.join(fresh)} {verb} fresh" if fresh else "")
            + "; optimizers, schedule, pools and step start fresh")
