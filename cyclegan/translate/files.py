"""Image files in, PNG files out, split across ranks: rank r translates every world-th file.
The files are one domain, read alike (`cyclegan.io.samples.domain_decoding`): where any is
deeper than 8 bits (16-bit or float images, `.npy` arrays), or under a `range:` or `percentile:`
normalisation, every one takes the deep path and comes out at its own type: a TIFF for a TIFF,
a PNG for a PNG where one holds them (`cyclegan.io.formats.fits_png`), `.npy` otherwise.

Each output is written under a temporary name and renamed when complete, so a rerun of an
interrupted job keeps the outputs it finds and translates only the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from cyclegan.errors import DataError, UserError
from cyclegan.images import ChannelMismatch, ImageDecodeError, list_images
from cyclegan.io.files import atomic_write
from cyclegan.io.formats import Probe, encode, fits_png, probe
from cyclegan.io.samples import Decoding, Sample, restore
from cyclegan.translate.core import ImageTooSmall, TranslateReport, Translator


def output_names(suffixes: dict[Path, str], root: Path) -> dict[Path, Path]:
    """Each input's output (relative paths), given its output suffix: `x.jpg` -> `x.png`; where
    inputs share a stem (`x.jpg` and `x.png`, or `x.png` and `x.PNG`), those whose suffix is not
    the output's keep their whole name, `x.jpg` -> `x.jpg.png`. Two inputs that would still share
    an output (`y.jpg` and `y.jpg.png`) stop the run before any work, naming both (under `root`)."""
    stems = Counter(relative.with_suffix("") for relative in suffixes)
    names: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    for relative, suffix in suffixes.items():
        shared = stems[relative.with_suffix("")] > 1 and relative.suffix != suffix
        name = relative.with_name(relative.name + suffix) if shared else relative.with_suffix(suffix)
        if name in taken:
            raise UserError(f"{root / taken[name]} and {root / relative} would both be translated to {name}: "
                            "rename one of them")
        names[relative], taken[name] = name, relative
    return names


def output_format(probed: Probe, decoding: Decoding, translator: Translator) -> str:
    """The format of a file's translation, from its header and its domain's path: an 8-bit PNG on
    the official path; on the deep path, a TIFF or `.npy` file for one, else a PNG where it holds
    the translation's type and bands, `.npy` where not."""
    if not decoding.all_deep:
        return "png"
    if probed.kind in ("npy", "tif"):
        return probed.kind
    dtype, bands = translator.output.dtype(probed.dtype), translator.out_channels
    return "png" if fits_png(dtype, bands) else "npy"


def load(path: Path, load_size: int | None, translator: Translator, decoding: Decoding,
         report: TranslateReport) -> Sample | None:
    """The file as the generator's input (resized to `load_size` square if given), or None if
    unreadable or of other bands than the generator takes (colour where it takes greyscale)."""
    try:
        sample = translator.read(path, decoding=decoding)
    except (ImageDecodeError, ChannelMismatch) as err:
        report.skipped.append(str(err))
        return None
    if sample.converted:
        report.converted[sample.converted] += 1
    return sample.resized((load_size, load_size)) if load_size else sample


def plan_outputs(translator: Translator, files: list[Path], root: Path, report: TranslateReport | None = None,
                 mine: set[Path] | None = None) -> tuple[dict[Path, Probe], Decoding, dict[Path, Path]]:
    """Every readable file's header, the set's decoding (one domain: `Translator.domain`) and each
    readable file's output, relative to `root` (`output_names`). Every rank reads every header, so
    that all make one domain decision and a clash of outputs stops all; the files that cannot be
    read go into `report`'s skipped ones where `mine` (this rank's share; None: all) holds them."""
    headers: dict[Path, Probe] = {}
    for path in files:
        try:
            headers[path] = probe(path)
        except ImageDecodeError as err:
            if report is not None and (mine is None or path in mine):
                report.skipped.append(str(err))
    decoding = translator.domain(probed.deep for probed in headers.values())
    names = output_names({p.relative_to(root): f".{output_format(probed, decoding, translator)}"
                          for p, probed in headers.items()}, root)
    return headers, decoding, names


def translate_files(translator: Translator, source: Path, output: Path, load_size: int | None = None,
                    batch_size: int = 4, rank: int = 0, world_size: int = 1,
                    checked: Callable[[bool], None] | None = None) -> TranslateReport:
    """Translate `source` (an image, or a folder searched recursively) into files under `output`,
    keeping relative paths; this rank's share of the files. `checked` is called once the inputs
    are listed and their outputs named, before the first output is written, with whether they
    take the deep path (`Decoding.all_deep`), for the output's record."""
    if source.is_file():
        files, root = [source], source.parent
    elif source.is_dir():  # leaving out an output folder inside the input, which a rerun would find
        files, root = [p for p in list_images(source) if output.resolve() not in p.resolve().parents], source
    else:
        raise DataError(f"input {source} does not exist")
    if not files:
        raise DataError(f"no images found under {source}")
    report = TranslateReport()
    headers, decoding, names = plan_outputs(translator, files, root, report, set(files[rank::world_size]))
    groups: dict[tuple[int, int], list[tuple[Path, Path]]] = defaultdict(list)
    for path in files[rank::world_size]:
        if path not in headers:
            continue
        target = output / names[path.relative_to(root)]
        if target.resolve() == path.resolve():
            raise UserError(f"translating {path} into {output} would overwrite it: choose another --output")
        if target.is_file():
            report.done_before += 1
            continue
        groups[(load_size, load_size) if load_size else headers[path].size].append((path, target))
    if checked is not None:
        checked(decoding.all_deep)
    with tqdm(total=sum(map(len, groups.values())), desc="translate", unit="img", disable=rank != 0) as bar:
        for _, jobs in sorted(groups.items()):  # one size per forward pass, and one kind: the domain's
            for start in range(0, len(jobs), batch_size):
                part = jobs[start:start + batch_size]
                chunk = [(sample, path, target) for path, target in part
                         if (sample := load(path, load_size, translator, decoding, report)) is not None]
                try:
                    translated = translator.translate([sample.array() for sample, _, _ in chunk]) if chunk else []
                except ImageTooSmall as err:
                    report.skipped += [f"{path}: {err}" for _, path, _ in chunk]
                    translated = []
                for result, (sample, _, target) in zip(translated, chunk):
                    atomic_write(target, encode(restore(result, sample, translator.output), target.suffix[1:]))
                report.written += len(translated)
                bar.update(len(part))
    return report
