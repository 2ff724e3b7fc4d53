"""Image files in, PNG files out, split across ranks: rank r translates every world-th file.

Each output is written under a temporary name and renamed when complete, so a rerun of an
interrupted job keeps the outputs it finds and translates only the rest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cyclegan.errors import DataError, UserError
from cyclegan.images import ChannelMismatch, ImageDecodeError, list_images, open_image, to_channels, to_image, to_pixels
from cyclegan.translate.core import ImageTooSmall, TranslateReport, Translator


def output_name(relative: Path, stems: Counter) -> Path:
    """`x.jpg` -> `x.png`; but when `x.jpg` and `x.png` are both inputs, `x.jpg` -> `x.jpg.png`."""
    if stems[relative.with_suffix("")] > 1 and relative.suffix.lower() != ".png":
        return relative.with_name(relative.name + ".png")
    return relative.with_suffix(".png")


def save_png(pixels: np.ndarray, target: Path) -> None:
    """Write atomically: a file with the final name is always complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        to_image(pixels).save(partial, format="PNG")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


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


def translate_files(translator: Translator, source: Path, output: Path, load_size: int | None = None,
                    batch_size: int = 4, rank: int = 0, world_size: int = 1) -> TranslateReport:
    """Translate `source` (an image, or a folder searched recursively) into PNGs under `output`,
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
    groups: dict[tuple[int, int], list[tuple[Path, Path]]] = defaultdict(list)
    for path in files[rank::world_size]:
        target = output / output_name(path.relative_to(root), stems)
        if target.resolve() == path.resolve():
            raise UserError(f"translating {path} into {output} would overwrite it: choose another --output")
        if target.is_file():
            report.done_before += 1
            continue
        try:
            with Image.open(path) as image:
                size = image.size
        except Exception as err:  # PIL raises many kinds for a bad header
            report.skipped.append(f"{path}: cannot be opened ({err})")
            continue
        groups[(load_size, load_size) if load_size else size].append((path, target))
    with tqdm(total=sum(map(len, groups.values())), desc="translate", unit="img", disable=rank != 0) as bar:
        for _, jobs in sorted(groups.items()):  # one size per forward pass
            for start in range(0, len(jobs), batch_size):
                part = jobs[start:start + batch_size]
                chunk = [(pixels, path, target) for path, target in part
                         if (pixels := load_pixels(path, load_size, translator.in_channels, report)) is not None]
                try:
                    translated = translator.translate([pixels for pixels, _, _ in chunk]) if chunk else []
                except ImageTooSmall as err:
                    report.skipped += [f"{path}: {err}" for _, path, _ in chunk]
                    translated = []
                for pixels, (_, _, target) in zip(translated, chunk):
                    save_png(pixels, target)
                report.written += len(translated)
                bar.update(len(part))
    return report
