"""What a checkpoint offers a visitor of the demo page: its generators by direction (A -> B, and
B -> A where it has both) and by weights (averaged and trained where both were kept), what it is
(the facts the model card gives), and a few example inputs to click.

Any checkpoint the translation command takes works: a run folder (its export, and the other kind
of weights from its newest checkpoint where that checkpoint holds both), an export or checkpoint
folder, a Hugging Face folder, official files or a generator file.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from cyclegan.checkpoint import step_dir
from cyclegan.config import DataConfig
from cyclegan.data.demo import draw, random_scene
from cyclegan.data.sources import find_sources, is_local
from cyclegan.errors import CheckpointError, DataError, UserError
from cyclegan.export import MODELS, is_averaged, newest_sample, objective_of, run_facts, run_folder
from cyclegan.images import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS
from cyclegan.io.files import atomic_write
from cyclegan.io.records import read_json
from cyclegan.io.samples import sample_field
from cyclegan.models.loading import GENERATOR_FILE_NAMES, HF_WEIGHTS, describe, resolve_generator_path
from cyclegan.translate.core import CLI_NAMES, Translator, pick_device
from cyclegan.translate.shards import strict_samples

WAYS = {"AtoB": "A → B", "BtoA": "B → A"}  # as the page names the directions
AVERAGED, TRAINED = "averaged (EMA)", "trained"
EXPORTED = "exported"  # a Hugging Face folder's: its model card says which
EXAMPLES = 3  # per direction
SCENE_SIZE = 128  # pixels of a bundled demo scene


@dataclass(frozen=True)
class Example:
    path: Path
    direction: str  # the direction it is an input of


def other_weights(weights: Path) -> Path | None:
    """The other kind of the same generator, if kept: `g_ab` beside `g_ab_ema` (a checkpoint
    folder), or, for a run's export, the newest checkpoint's of the same step."""
    stem = weights.stem
    if stem.removesuffix("_ema") not in GENERATOR_FILE_NAMES.values():
        return None
    other_name = f"{stem.removesuffix('_ema')}{'' if stem.endswith('_ema') else '_ema'}{weights.suffix}"
    if (weights.parent / other_name).is_file():
        return weights.parent / other_name
    run = run_folder(weights.resolve())
    if run is None or weights.resolve().parent != (run / "export").resolve():
        return None
    try:  # a damaged record only hides the other kind: the weights themselves load without it
        state = read_json(weights.parent / "state.json", error=CheckpointError)
    except CheckpointError:
        return None
    if not isinstance(state.get("step"), int):
        return None
    name = f"{stem}{weights.suffix}" if is_averaged(weights) else f"{stem}_ema{weights.suffix}"
    kept = step_dir(run / "checkpoints", state["step"]) / name
    return kept if kept.is_file() else None


def generator_files(checkpoint: Path) -> dict[str, dict[str, Path]]:
    """direction -> {weights label -> generator file}, the file a translation would pick first. A
    file that says no direction serves one way (A -> B, as translation takes it)."""
    found: dict[str, dict[str, Path]] = {}
    errors = []
    for direction in GENERATOR_FILE_NAMES:
        try:
            weights = resolve_generator_path(checkpoint, direction)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        if any(weights in kinds.values() for kinds in found.values()):
            continue
        own = EXPORTED if weights.name == HF_WEIGHTS else AVERAGED if is_averaged(weights) else TRAINED
        choices = {own: weights}
        if (other := other_weights(weights)) is not None:
            choices[TRAINED if own == AVERAGED else AVERAGED] = other
        found[direction] = choices
    if not found:
        raise CheckpointError(errors[0])
    return found


class Served:
    """The generators of one checkpoint, loaded once on one device, each as a `Translator`."""

    def __init__(self, checkpoint: Path, device: str = "auto", precision: str = "fp32",
                 tile: int | None = None) -> None:
        if not checkpoint.exists():
            raise CheckpointError(f"--checkpoint {checkpoint} does not exist")
        self.checkpoint, self.files = checkpoint, generator_files(checkpoint)
        dev = pick_device(device)
        self.translators = {(direction, kind): Translator.from_pretrained(path, direction, dev, precision, tile,
                                                                          names=CLI_NAMES)
                            for direction, kinds in self.files.items() for kind, path in kinds.items()}
        first = next(iter(self.files.values()))
        self.run = run_folder(next(iter(first.values())).resolve())
        self.objective = objective_of(next(iter(first.values())), self.run)

    @property
    def directions(self) -> list[str]:
        return list(self.files)

    def weight_kinds(self, direction: str) -> list[str]:
        return list(self.files[direction])

    def translator(self, direction: str, kind: str | None = None) -> Translator:
        """The generator of `direction` with `kind` weights (None: the first, as translation picks)."""
        if direction not in self.files:
            raise UserError(f"this model has no {direction} generator (it translates {', '.join(self.files)})")
        kinds = self.files[direction]
        if kind is not None and kind not in kinds:
            raise UserError(f"the {direction} generator has no {kind} weights here (only {', '.join(kinds)})")
        return self.translators[(direction, kind or next(iter(kinds)))]

    @property
    def title(self) -> str:
        ways = " and ".join(WAYS[d] for d in self.files)
        return f"{MODELS[self.objective][0]}: {self.checkpoint.resolve().name} ({ways})"

    def about(self) -> str:
        """Markdown: what the model is, as its model card says it (read from the run's files)."""
        name, paper = MODELS[self.objective]
        lines = [f"# {self.title}", "", f"{name} ({paper}), from `{self.checkpoint.resolve().name}`.", ""]
        card = self.checkpoint / "README.md"
        if self.run is None and (self.checkpoint / HF_WEIGHTS).is_file() and card.is_file():
            text = card.read_text(encoding="utf-8", errors="replace")
            body = text.split("---", 2)[2] if text.startswith("---") and text.count("---") >= 2 else text
            return "\n".join(lines + ["The model card of this folder:", "", body.strip()])
        for direction, kinds in self.files.items():
            for kind, weights in kinds.items():
                spec = self.translators[(direction, kind)].net.spec
                lines += [f"## {WAYS[direction]}, {kind} weights", "", f"- {describe(spec)}",
                          f"- weights: `{shown_path(weights, self.checkpoint)}`"]
                if self.run is not None:
                    lines += [f"- {fact}" for fact in run_facts(self.run, weights, direction, self.objective)]
                lines.append("")
        if self.run is None:
            lines.append("These weights came without their training run: no training facts to show.")
        return "\n".join(lines)

    def sample_grid(self, direction: str) -> Path | None:
        """The run's newest sample grid of `direction`, shown on the model page."""
        return newest_sample(self.run, direction) if self.run is not None else None

    def examples(self, folder: Path) -> list[Example]:
        """A few inputs of each direction written into `folder`: the run's test images where its
        shard folder is there to read, else those an exported folder carries (`examples/`), else
        bundled demo scenes (for generators of grey or colour images)."""
        found: list[Example] = []
        for direction in self.files:
            domain = direction[0]
            paths = ((test_images(self.run, domain, folder / domain, EXAMPLES) if self.run else [])
                     or carried(self.checkpoint / "examples" / domain, folder / domain))
            if not paths:
                paths = demo_scenes(domain, self.translators[(direction, self.weight_kinds(direction)[0])].in_channels,
                                    folder / domain)
            found += [Example(path, direction) for path in paths]
        return found


def carried(source: Path, folder: Path) -> list[Path]:
    """The example images an exported folder carries (`examples/A`, `examples/B`), copied into
    `folder`, which the page serves from wherever it was started."""
    if not source.is_dir():
        return []
    kept = [path for path in sorted(source.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS | ARRAY_EXTENSIONS][:EXAMPLES]
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(path, folder / path.name)) for path in kept]


def shown_path(path: Path, checkpoint: Path) -> str:
    """A file as the page names it: relative to the checkpoint (or its run), never the server's layout."""
    for base in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if base.is_dir() and path.resolve().is_relative_to(base.resolve()):
            return str(path.resolve().relative_to(base.resolve().parent))
    return path.name


def test_images(run: Path, domain: str, folder: Path, count: int) -> list[Path]:
    """The first `count` test samples of `domain` of the run's shard folder (`data.root` in its
    run.json, as given or beside the run), written into `folder` as they are stored; none where
    the shard folder or its test split is not there."""
    try:  # a damaged record only costs the examples
        record = read_json(run / "run.json") if (run / "run.json").is_file() else {}
    except DataError:
        return []
    root = (record.get("data") or {}).get("root") if isinstance(record.get("data"), dict) else None
    if not root:
        return []
    candidates = [Path(root), run.parent / root, run.parent / Path(root).name]
    shards = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if shards is None:
        return []
    try:
        sources = find_sources(DataConfig(root=str(shards)))
    except UserError:
        return []
    split = sources.test_a if domain == "A" else sources.test_b
    written: list[Path] = []
    for url in (split.urls if split else ()):
        if not is_local(url):
            return written
        try:
            for sample in strict_samples(url):
                field, _ = sample_field(sample)
                path = folder / f"{sample['__key__'].replace('/', '_')}.{field}"
                atomic_write(path, sample[field])
                written.append(path)
                if len(written) == count:
                    return written
        except DataError:
            return written
    return written


def demo_scenes(domain: str, channels: int, folder: Path) -> list[Path]:
    """The bundled demo's scenes in `domain`'s style (the shapes `make demo` trains on), grey for a
    greyscale generator; none for other band counts, which no image shows."""
    if channels not in (1, 3):
        return []
    rng, paths = random.Random(0), []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(EXAMPLES):
        image = draw(random_scene(rng, SCENE_SIZE), domain, SCENE_SIZE)
        path = folder / f"scene_{i}.png"
        (image.convert("L") if channels == 1 else image).save(path)
        paths.append(path)
    return paths

