"""What `scripts/translate.py` does: pick the input's kind, share the work across ranks (under
`accelerate launch`), translate, and report once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env
from PIL import Image

from cyclegan.data.shards import MANIFEST
from cyclegan.data.sources import is_local
from cyclegan.errors import DataError, UserError
from cyclegan.io.outputs import join_output_lock, output_lock, prepare_output
from cyclegan.io.records import read_json, write_json
from cyclegan.translate.core import CLI_NAMES, TranslateReport, Translator, pick_device
from cyclegan.translate.files import translate_files
from cyclegan.translate.shards import input_shards, translate_shards, write_manifest
from cyclegan.translate.video import VIDEO_EXTENSIONS, translate_video

SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
SETTINGS = ".translation.json"  # what an output folder was made with, so that a rerun matches it


def input_kind(spec: str) -> str:
    """`video`, `shards` (a shard folder, shard files, patterns or URLs) or `images`."""
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return "video"
        return "shards" if spec.endswith(SHARD_SUFFIXES) else "images"
    if path.is_dir():
        return "shards" if (path / MANIFEST).is_file() or any(path.glob("*.tar")) else "images"
    return "shards" if ".tar" in spec else "images"


def check_settings(output: Path, settings: dict) -> bool:
    """Refuse to finish another translation's output; returns whether `output` has no record yet
    (the main process writes one once the inputs are listed and checked, before the first output)."""
    recorded = output / SETTINGS
    if not recorded.is_file():
        return True
    previous = read_json(recorded)
    old_input = previous.get("input")  # earlier versions recorded the raw --input (`photos/`)
    if isinstance(old_input, str) and Path(old_input).exists():
        previous = {**previous, "input": str(Path(old_input).resolve())}
    if previous != settings:
        changed = ", ".join(f"{k}: {previous.get(k)} there, {settings[k]} here" for k in settings
                            if previous.get(k) != settings[k])
        raise UserError(f"{output} holds a translation made otherwise ({changed}): choose another --output")
    return False


@contextmanager
def holding(output: Path, state: PartialState) -> Iterator[None]:
    """`output`'s lock for this run, held by each of its processes (`output_lock` on the main one,
    which also removes a killed run's leftovers before the others start; shared by the others):
    while any of them lives, another run is refused. When another run holds it, the folder
    cannot be written, or taking it fails in any way, every rank stops (the main one with its
    error, the others with its message) rather than wait for the main one forever."""
    with ExitStack() as stack:
        refusal, failure = None, None
        if state.is_main_process:
            try:
                stack.enter_context(output_lock(output))
            except Exception as err:
                refusal, failure = str(err) or type(err).__name__, err
        if state.num_processes > 1:
            refusal = broadcast_object_list([refusal])[0]
        if failure is not None:
            raise failure
        if refusal:
            raise UserError(refusal)
        if not state.is_main_process:
            stack.enter_context(join_output_lock(output))
        yield


def run(checkpoint: Path, source: str, output: Path, direction: str | None = None, load_size: int | None = None,
        batch_size: int = 4, device: str = "auto", precision: str = "fp32", tile: int | None = None,
        smoothing: float = 0.0, normalize: str | None = None, normalize_output: str | None = None,
        output_range: str = "window") -> TranslateReport:
    """Translate `source` into `output`, print a summary once; returns the report of all ranks.
    `normalize` and `normalize_output` (the input's and output's domains) None take the run's
    settings for those domains (see `run_normalize`)."""
    for option, value, fits, needed in (("--batch-size", batch_size, batch_size >= 1, "at least 1"),
                                        ("--tile", tile, tile is None or tile >= 0, "at least 0"),
                                        ("--smoothing", smoothing, 0 <= smoothing < 1, "in [0, 1)")):
        if not fits:
            raise UserError(f"{option} {value}: must be {needed}")
    kind = input_kind(source)
    # gloo between CPU processes when there is no GPU or the CPU is asked for (as Accelerator does);
    # ranks that finish their share early wait at the end for the others, however long they take
    started_here = not torch.distributed.is_initialized()
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"),
                         timeout=timedelta(days=7))
    try:
        return _translate(state, kind, checkpoint, source, output, direction, load_size, batch_size, device,
                          precision, tile, smoothing, normalize, normalize_output, output_range)
    finally:
        if started_here:  # a gloo group left to the interpreter's exit can abort it (SIGABRT)
            state.destroy_process_group()


def _translate(state: PartialState, kind: str, checkpoint: Path, source: str, output: Path, direction: str | None,
               load_size: int | None, batch_size: int, device: str, precision: str, tile: int | None,
               smoothing: float, normalize: str | None, normalize_output: str | None,
               output_range: str) -> TranslateReport:
    """`run`'s work, between setting up the ranks and tearing them down."""
    dev = state.device if device == "auto" else pick_device(device)
    translator = Translator.from_pretrained(checkpoint, direction, dev, precision, tile, normalize, normalize_output,
                                            output_range == "dtype", CLI_NAMES)
    bf16, direction = translator.bf16, translator.direction
    Image.MAX_IMAGE_PIXELS = None  # one's own 20,000 px scene is no decompression bomb; tiles handle its size
    deep_note = " (deeper than 8-bit data in fp32)" if bf16 and not translator.deep_bf16 else ""
    state.print(f"translating {kind} {direction} on {translator.device} in {'bf16' if bf16 else 'fp32'}{deep_note} "
                f"with {state.num_processes} process(es)")
    if kind == "video":
        return _translate_video(state, translator, checkpoint, Path(source), output, batch_size, smoothing)
    # what the user asked for, with local paths resolved (`photos/` is `photos`); not a resolved
    # `auto`, which differs between node types that may share one output
    local = Path(source).exists()
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "direction": direction,
                "input": str(Path(source).resolve()) if local else source, "precision": precision,
                "load_size": load_size, "normalize": str(translator.normalize),
                "normalize_output": str(translator.output_normalize), "output_range": output_range}
    domain = "A" if direction == "AtoB" else "B"  # of the input
    read = [Path(checkpoint), Path(source)]
    if kind == "shards":  # a mistyped input stops here, before the output records anything
        read += [Path(url) for _, url in input_shards(source, domain) if is_local(url)]  # patterns, lists
    elif not local:
        raise DataError(f"input {source} does not exist")
    # translation removes nothing and checks each file it writes, so the output may hold what it reads
    prepare_output(output, [p for p in read if p.exists()], overwrite=False, resume=True, nested=True)
    with holding(output, state):
        def record(deep: bool) -> None:  # once the inputs are listed and checked, before the first output
            # with the domain's decision (every rank makes the same), so that a rerun whose inputs
            # would flip it is refused rather than mix the two paths in one output
            if check_settings(output, {**settings, "deep": deep}) and state.is_main_process:
                write_json(output / SETTINGS, {**settings, "deep": deep})

        if kind == "shards":
            mine, shards = translate_shards(translator, source, output, domain, batch_size, state.process_index,
                                            state.num_processes, checked=record)
        else:
            mine = translate_files(translator, Path(source), output, load_size, batch_size, state.process_index,
                                   state.num_processes, checked=record)
        report = TranslateReport()
        for part in gather_object([mine]) if state.num_processes > 1 else [mine]:
            report.merge(part)
        if kind == "shards" and state.is_main_process:
            write_manifest(output, shards, "B" if domain == "A" else "A", settings)  # outputs are of the other domain
        state.wait_for_everyone()
    state.print(report.summary(output, "sample(s)" if kind == "shards" else "image(s)"))
    if report.failed:
        raise UserError(f"{len(report.failed)} input(s) could not be read (listed above); the rest is done")
    return report


def _translate_video(state: PartialState, translator: Translator, checkpoint: Path, source: Path, output: Path,
                     batch_size: int, smoothing: float) -> TranslateReport:
    """Translate the video `source` on the main process into `output` (a video file, or a folder
    to hold one of the input's name). A video is written whole, so there is nothing to resume: an
    existing output is refused (translate has no --overwrite), as is the input itself."""
    target = output if output.suffix.lower() in VIDEO_EXTENSIONS else output / source.name
    prepare_output(target, [p for p in (Path(checkpoint), source) if p.exists()], overwrite=None, nested=True)
    state.wait_for_everyone()  # every rank has checked before the main process writes
    report = TranslateReport()
    if state.is_main_process:
        report.written, short = translate_video(translator, source, target, batch_size, smoothing)
    state.print(report.summary(target, "frame(s)"))
    if state.is_main_process and short:  # exit 0: the frames there are, translated; the summary says the rest
        state.print(f"warning: {short}")
    state.wait_for_everyone()
    return report
