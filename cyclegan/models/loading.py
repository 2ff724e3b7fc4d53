"""Reading and writing network weights: official `.pth` state_dicts and our safetensors exports.

Official files are plain state_dicts; the generator's architecture is read off its tensors.
Our exports are `NAME.safetensors` plus `NAME.json` holding the `GeneratorSpec`. Every
failure is a `CheckpointError` that names the file and says what was expected.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cyclegan.errors import CheckpointError
from cyclegan.io.files import atomic_path
from cyclegan.io.records import read_json, write_json
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator

LEGACY_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
GENERATOR_FILE_NAMES = {"AtoB": "g_ab", "BtoA": "g_ba"}
OFFICIAL_FILE_NAMES = {"AtoB": "latest_net_G_A.pth", "BtoA": "latest_net_G_B.pth"}
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"  # the Hugging Face folder format
ONE_WAY = ("cut", "fastcut")  # the objectives that train G (A -> B) alone
OFFICIAL_CUT_HEAD = "latest_net_F.pth"  # beside latest_net_G.pth, it marks the official CUT files
BLUR_FILTER = ".filt"  # the key suffix of the anti-aliased layers' filters: CUT's layout, never CycleGAN's


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from `.safetensors` or a torch file, safely (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); was its download or save interrupted?")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} was refused by torch.load(weights_only=True): it holds Python objects, "
            f"not only tensors ({reason}). Re-save it as a plain state_dict of tensors from a source you trust."
        ) from None
    except Exception as err:  # a damaged file fails in many ways deep inside the unpickler
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch file; it may be truncated or not a checkpoint "
            f"at all ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    return state


def load_into(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path, expected: str) -> None:
    """`net.load_state_dict(state, strict=True)`, with mismatches explained instead of raised raw."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs network {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = [f"checkpoint {path} does not fit the expected {expected}"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError("; ".join(parts))
    net.load_state_dict(state, strict=True)


def infer_generator_spec(state: dict[str, torch.Tensor], path: str | Path) -> GeneratorSpec:
    """Read ngf, block count, norm, dropout and channels off an official-layout state_dict."""
    first = state.get("model.1.weight")
    if first is None or first.dim() != 4 or first.shape[-1] != 7:
        hint = " It looks like a discriminator." if "model.0.weight" in state else ""
        raise CheckpointError(
            f"checkpoint {path} is not a ResNet generator state_dict: it has no 7x7 'model.1.weight'.{hint}"
        )
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"model\.(\d+)\.conv_block\.", key))}
    first_block = min(blocks) if blocks else None
    after_dropout = state.get(f"model.{first_block}.conv_block.6.weight")
    dropout = after_dropout is not None and after_dropout.dim() == 4  # the second conv moved from .5 to .6
    if "model.2.weight" in state:
        norm = "batch"
    elif "model.1.bias" in state:
        norm = "instance"
    else:
        norm = "none"
    convs = [
        (int(m.group(1)), tensor)
        for key, tensor in state.items()
        if (m := re.fullmatch(r"model\.(\d+)\.weight", key)) and tensor.dim() == 4
    ]
    last = max(convs, key=lambda item: item[0])[1]
    return GeneratorSpec(
        in_channels=first.shape[1],
        out_channels=last.shape[0],
        ngf=first.shape[0],
        n_blocks=len(blocks),
        norm=norm,
        dropout=dropout,
        antialias=any(key.endswith(BLUR_FILTER) for key in state),
    )


def describe(spec: GeneratorSpec) -> str:
    return (
        f"ResNet generator (ngf={spec.ngf}, n_blocks={spec.n_blocks}, norm={spec.norm}, "
        f"dropout={spec.dropout}{', anti-aliased' if spec.antialias else ''}, channels {spec.in_channels}->{spec.out_channels})"
    )


def generator_direction(path: Path) -> str | None:
    """The direction a generator file or folder says it translates: by its name (`g_ab`, `g_ba`,
    `latest_net_G_A`, `latest_net_G_B`) or a Hugging Face config's `direction`."""
    if path.is_dir():
        config = path / HF_CONFIG
        try:
            return read_json(config, error=CheckpointError).get("direction") if config.is_file() else None
        except CheckpointError:  # reported, naming the file, where the architecture is read from it
            return None
    for direction in GENERATOR_FILE_NAMES:
        if path.stem.removesuffix("_ema") in (GENERATOR_FILE_NAMES[direction], Path(OFFICIAL_FILE_NAMES[direction]).stem):
            return direction
    return None


def recorded_objective(folder: Path) -> str | None:
    """`model.objective` as a checkpoint or export folder's state.json records it (a run folder's:
    its export's), or a Hugging Face folder's config.json (whose `objective` is left out for
    cyclegan); None where no record says: no such file, one written before objectives, or one that
    cannot be read (reported, naming it, where the architecture is read from it; a state.json only
    describes the weights, which load without it)."""
    try:
        if (folder / HF_WEIGHTS).is_file() and (folder / HF_CONFIG).is_file():
            return read_json(folder / HF_CONFIG, error=CheckpointError).get("objective", "cyclegan")
        for state in (folder / "state.json", folder / "export" / "state.json"):
            if state.is_file():
                model = read_json(state, error=CheckpointError).get("model")
                return model.get("objective") if isinstance(model, dict) else None
    except CheckpointError:
        return None
    return None


def one_way(path: Path) -> str | None:
    """What a generator file or folder holds when its model translates A -> B only; None otherwise.
    Told by the record of the folder (a file's: the folder it lies in): a CUT run, export,
    checkpoint or Hugging Face folder; else by the official CUT patch head `latest_net_F.pth`
    beside the generator; else, for a file whose name says no direction (`latest_net_G.pth`, as
    CUT's pretrained releases ship it alone) and whose architecture is read off its tensors, by
    blur filters in it: the official CUT layout, which the official CycleGAN code never writes.
    Files named for a direction (`g_ba`, `latest_net_G_B`) are a pair's, even with blur filters
    (the CUT code's own `--model cycle_gan` writes those)."""
    folder = path if path.is_dir() else path.parent
    objective = recorded_objective(folder)
    if objective in ONE_WAY:
        return f"a {objective} model (model.objective={objective})"
    if objective is not None:
        return None
    if (folder / OFFICIAL_CUT_HEAD).is_file():
        return f"an official CUT model (with its {OFFICIAL_CUT_HEAD})"
    if (path.is_file() and generator_direction(path) is None and _sidecar(path) is None
            and any(key.endswith(BLUR_FILTER) for key in read_state_dict(path))):
        return "an anti-aliased generator in the official layout named for no direction: CUT's G"
    return None


def refuse_b_to_a(path: Path, asked: Path) -> None:
    """An error where `path` translates A -> B only (`one_way`); `asked`: what the caller named."""
    if why := one_way(path):
        raise CheckpointError(f"{asked} holds {why}, which translates A -> B only: use direction AtoB (the default); "
                              "for B -> A, train another CUT run with the domains swapped")


def resolve_generator_path(path: str | Path, direction: str | None = None) -> Path:
    """The generator file a path stands for: a run folder for its `export/`; an export or checkpoint
    folder for its `g_ab` (AtoB, the default) or `g_ba` (BtoA), the averaged one (`g_ab_ema`) where
    a checkpoint has it, as grids and evaluation use it (pass the `g_ab.safetensors` file itself for
    the trained one; an export holds what `train.export_ema` chose); a folder of official files for
    `latest_net_G_A.pth`, `latest_net_G_B.pth` or the pretrained downloads' `latest_net_G.pth`; a
    Hugging Face folder for its `model.safetensors`. A file or folder whose name or config says
    another direction than the one asked for is refused, and so is BtoA where the path, or the file
    it stands for, holds a model that translates A -> B only (`one_way`)."""
    path = Path(path)
    if direction not in (None, *GENERATOR_FILE_NAMES):
        raise CheckpointError(f"direction must be AtoB or BtoA, not {direction!r}")
    if direction == "BtoA":  # before looking for its file: a CUT folder has none for B -> A
        refuse_b_to_a(path, path)
    if path.is_dir() and (path / "export").is_dir():
        path = path / "export"
    if path.is_dir() and (path / HF_WEIGHTS).is_file():
        resolved = path / HF_WEIGHTS
    elif path.is_dir():
        name = GENERATOR_FILE_NAMES[direction or "AtoB"]
        candidates = [path / OFFICIAL_FILE_NAMES[direction or "AtoB"], path / "latest_net_G.pth",
                      path / f"{name}_ema.safetensors", path / f"{name}.safetensors"]
        resolved = next((c for c in candidates if c.is_file()), None)
        if resolved is None:
            raise CheckpointError(f"{path} is a folder without {' or '.join(c.name for c in candidates)}: pass a "
                                  "generator file, or a run, export, checkpoint, official or Hugging Face folder")
    else:
        resolved = path
    if direction == "BtoA" and resolved != path:  # a folder's file: official CUT weights without their head
        refuse_b_to_a(resolved, path)
    named = generator_direction(path if path.is_dir() and (path / HF_WEIGHTS).is_file() else resolved)
    if direction and named and named != direction:
        raise CheckpointError(f"{path} holds the {named} generator, but {direction} was asked for")
    return resolved


def load_generator(path: str | Path, expected: GeneratorSpec | None = None,
                   direction: str | None = None) -> ResnetGenerator:
    """Load an official `.pth` or an exported `.safetensors` generator, checked key by key.

    Without `expected`, the architecture comes from the export's JSON or, for official files,
    from the tensors. Legacy InstanceNorm running statistics are dropped, as the official
    test code does.
    """
    path = resolve_generator_path(path, direction)
    state = read_state_dict(path)
    spec = expected or _export_spec(path) or infer_generator_spec(state, path)
    if spec.norm == "instance":
        state = without_legacy_norm_stats(state)
    net = ResnetGenerator(spec)
    load_into(net, state, path, describe(spec))
    return net.eval()


def without_legacy_norm_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old official files carry instance-norm running statistics, which the networks never use."""
    return {k: v for k, v in state.items() if not k.endswith(LEGACY_NORM_STATS)}


def _export_spec(path: Path) -> GeneratorSpec | None:
    """The architecture saved beside exported weights: NAME.json, or a Hugging Face config.json."""
    sidecar = _sidecar(path)
    if sidecar is None:
        return None
    fields = read_json(sidecar, error=CheckpointError)
    for key in ("direction", "objective"):  # a Hugging Face config also says which way the generator
        fields.pop(key, None)              # translates, and what trained it
    return generator_spec(fields, f"architecture file {sidecar}")


def _sidecar(path: Path) -> Path | None:
    """The file that describes an export's architecture (NAME.json, or a Hugging Face config.json);
    None where the architecture is read off the tensors."""
    sidecar = path.parent / HF_CONFIG if path.name == HF_WEIGHTS else path.with_suffix(".json")
    return sidecar if path.suffix == ".safetensors" and sidecar.is_file() else None


def generator_spec(fields: dict, where: str) -> GeneratorSpec:
    """The architecture a stored record describes (`where` names it in the one-line error for
    an unknown or missing field)."""
    try:
        return GeneratorSpec(**fields)
    except TypeError as err:
        raise CheckpointError(f"{where} is not a valid generator description ({err})") from None


def save_weights(net: nn.Module, path: Path) -> None:
    """A network's state_dict as safetensors (no pickle, so loading it runs no code)."""
    with atomic_path(path) as temporary:
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(temporary))


def export_generator(net: ResnetGenerator, path: Path) -> None:
    """Write `path` (.safetensors) and its architecture JSON beside it."""
    save_weights(net, path)
    write_json(path.with_suffix(".json"), net.spec.to_dict())
