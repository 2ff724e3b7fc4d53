"""Image files in, PNG files out, split across ranks: rank r translates every world-th file.
Deeper inputs (16-bit or float images, `.npy` arrays, or any input under a `range:` or
`percentile:` normalisation) come out at their own depth: a TIFF for a TIFF, a PNG for a PNG
where one holds them (`cyclegan.arrays.fits_png`), `.npy` otherwise.

Each output is written under a temporary name and renamed when complete, so a rerun of an
interrupted job keeps the outputs it finds and translates only the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cyclegan.arrays import encode, fit_bands, fits_png, is_deep, probe, read_array
from cyclegan.errors import DataError, UserError
from cyclegan.images import (
    ARRAY_EXTENSIONS,
    ChannelMismatch,
    ImageDecodeError,
    list_images,
    open_image,
    to_channels,
    to_pixels,
)
from cyclegan.translate.core import DeepInput, ImageTooSmall, TranslateReport, Translator


def output_name(relative: Path, stems: Counter, suffix: str = ".png") -> Path:
    """`x.jpg` -> `x.png`; but when `x.jpg` and `x.png` are both inputs, `x.jpg` -> `x.jpg.png`."""
    if stems[relative.with_suffix("")] > 1 and relative.suffix.lower() != suffix:
        return relative.with_name(relative.name + suffix)
    return relative.with_suffix(suffix)


def save(data: bytes, target: Path) -> None:
    """Write atomically: a file with the final name is always complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(data)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


def inspect(path: Path, translator: Translator) -> tuple[tuple[int, int], str | None, bool]:
    """(width, height), the output format for a deep input (None: 8-bit PNG) and whether the input
    takes the deep path, from the file's header alone."""
    probed = probe(path)
    if not (probed.deep or is_deep(None, translator.normalize, translator.in_channels, translator.out_channels)):
        return probed.size, None, False
    if probed.kind in ("npy", "tif"):
        return probed.size, probed.kind, True
    dtype, bands = translator.output_dtype(probed.dtype), translator.out_channels
    return probed.size, "png" if fits_png(dtype, bands) else "npy", True


def load_pixels(path: Path, load_size: int | None, channels: int, report: TranslateReport) -> np.ndarray | None:
    """The image as 8-bit H x W x `channels` (resized to `load_size` square if given), or None if
    unreadable or of colour where the generator takes greyscale."""
    try:
        image = open_image(path)
        mode = image.mode
        if load_size:
            image = to_channels(image, channels, str(path)).resize((load_size, load_size), Image.BICUBIC)
        pixels = to_pixels(image, channels, str(path))
    except (ImageDecodeError, ChannelMismatch) as err:
        report.skipped.append(str(err))
        return None
    if mode != ("RGB" if channels == 3 else "L"):
        report.converted[mode] += 1
    return pixels


def load_deep(path: Path, load_size: int | None, translator: Translator, report: TranslateReport) -> DeepInput | None:
    """A deep input, normalised (resized to `load_size` square if given), or None if unreadable or
    of other channels than the generator takes."""
    try:
        array = fit_bands(read_array(path, str(path), path.suffix.lower() in ARRAY_EXTENSIONS),
                          translator.in_channels, str(path), path.suffix.lower() not in ARRAY_EXTENSIONS)
        deep = translator.deep_input(array, str(path))
    except (ImageDecodeError, ChannelMismatch) as err:
        report.skipped.append(str(err))
        return None
    return deep.resized(load_size) if load_size else deep


def translate_files(translator: Translator, source: Path, output: Path, load_size: int | None = None,
                    batch_size: int = 4, rank: int = 0, world_size: int = 1) -> TranslateReport:
    """Translate `source` (an image, or a folder searched recursively) into files under `output`,
    keeping relative paths; this rank's share of the files."""
    if source.is_file():
        files, root = [source], source.parent
    elif source.is_dir():  # leaving out an output folder inside the input, which a rerun would find
        files, root = [p for p in list_images(source) if output.resolve() not in p.resolve().parents], source
    else:
        raise DataError(f"input {source} does not exist")
    if not files:
        raise DataError(f"no images found under {source}")
    stems = Counter(p.relative_to(root).with_suffix("") for p in files)
    report = TranslateReport()
    groups: dict[tuple[int, int, bool], list[tuple[Path, Path]]] = defaultdict(list)
    for path in files[rank::world_size]:
        try:
            size, fmt, deep = inspect(path, translator)
        except ImageDecodeError as err:
            report.skipped.append(str(err))
            continue
        target = output / output_name(path.relative_to(root), stems, f".{fmt or 'png'}")
        if target.resolve() == path.resolve():
            raise UserError(f"translating {path} into {output} would overwrite it: choose another --output")
        if target.is_file():
            report.done_before += 1
            continue
        groups[((load_size, load_size) if load_size else size) + (deep,)].append((path, target))
    with tqdm(total=sum(map(len, groups.values())), desc="translate", unit="img", disable=rank != 0) as bar:
        for (*_, deep), jobs in sorted(groups.items()):  # one size and kind per forward pass
            for start in range(0, len(jobs), batch_size):
                part = jobs[start:start + batch_size]
                if deep:
                    chunk = [(item, path, target) for path, target in part
                             if (item := load_deep(path, load_size, translator, report)) is not None]
                    inputs = [item.unit for item, _, _ in chunk]
                else:
                    chunk = [(pixels, path, target) for path, target in part
                             if (pixels := load_pixels(path, load_size, translator.in_channels, report)) is not None]
                    inputs = [pixels for pixels, _, _ in chunk]
                try:
                    translated = translator.translate(inputs) if chunk else []
                except ImageTooSmall as err:
                    report.skipped += [f"{path}: {err}" for _, path, _ in chunk]
                    translated = []
                for result, (item, _, target) in zip(translated, chunk):
                    if deep:
                        save(encode(translator.restore(result, item), target.suffix[1:]), target)
                    else:
                        save(encode(result, "png"), target)
                report.written += len(translated)
                bar.update(len(part))
    return report
