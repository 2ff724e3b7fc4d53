"""Packing image folders into WebDataset tar shards, with a manifest and a report of bad files.

Every image is decoded once. Clean 8-bit RGB JPEG and PNG files keep their bytes; anything
else (greyscale, palette, alpha, CMYK, 16-bit, TIFF, BMP, WebP, ...) becomes an RGB PNG.
With `keep_depth`, 16-bit greyscale images become 16-bit PNGs and float ones float TIFFs
instead, unquantised. `.npy` arrays (H x W or H x W x C; uint8, uint16, int16 or float32) are
stored as they are, whatever their band count, and never resized. The manifest records each
domain's types, array bands and value range. Files that are empty, truncated or not images
are skipped and reported. The output is
written under a temporary name and renamed at the end, so a folder with a manifest is
always complete.
"""

from __future__ import annotations

import io
import itertools
from collections import Counter
from dataclasses import dataclass, field
import multiprocessing
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from cyclegan.data.normalize import cast
from cyclegan.data.transforms import resize_bands
from cyclegan.errors import DataError
from cyclegan.io.files import atomic_folder, remove_leftovers
from cyclegan.io.outputs import prepare_output, replacement_lock
from cyclegan.io.records import write_json
from cyclegan.images import (
    ARRAY_EXTENSIONS,
    HIGH_DEPTH_MODES,
    ImageDecodeError,
    hwc_array,
    is_grey,
    list_images,
    open_image,
    to_rgb,
)
from cyclegan.io.formats import describe, encode, fits_png, image_array, load_npy, npy_bytes, probe, read_array

MANIFEST = "manifest.json"
SPLIT_FOLDERS = {("train", "A"): "trainA", ("train", "B"): "trainB", ("test", "A"): "testA", ("test", "B"): "testB"}
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}


@dataclass
class Prepared:
    """One source file, ready to write (`data` set) or skipped (`error` set)."""

    relative: Path
    ext: str = ""
    data: bytes = b""
    converted_from: str | None = None
    colour: bool = False  # not greyscale: a 1-channel domain cannot take it
    content: dict = field(default_factory=dict)  # `cyclegan.io.formats.describe`, and "array": whether it is a .npy array
    error: str | None = None


def sample_key(relative: Path, seen: set[str]) -> str:
    """A stable tar key from a relative path, unique among `seen` (which it joins).

    WebDataset splits names at the first dot, so none may remain. The key is the path
    without its extension (so testA/x.png and testB/x.jpg pair up), or with it when two
    files differ only in their extension.
    """
    numbered = (relative.with_name(f"{relative.name}_{i}") for i in itertools.count(2))
    for candidate in itertools.chain([relative.with_suffix(""), relative], numbered):
        key = candidate.as_posix().replace(".", "_")
        if key not in seen:
            seen.add(key)
            return key


def prepare_image(job: tuple[Path, Path, int | None, bool]) -> Prepared:
    """Decode one file to validate it and decide which bytes go into the shard."""
    path, root, max_side, keep_depth = job
    prepared = Prepared(relative=path.relative_to(root))
    try:
        if path.suffix.lower() in ARRAY_EXTENSIONS:
            array = load_npy(path, str(path))
            prepared.ext, prepared.data = "npy", npy_bytes(array)
            prepared.content = {**describe(array), "array": True}
            return prepared
        probed = probe(path)
        if probed.beyond_pillow and keep_depth:
            return _deep(prepared, read_array(path, str(path), False), path, probed.kind, max_side)
        if probed.beyond_pillow and probed.bands not in (1, 3):
            raise ImageDecodeError(f"{path}: an image of {probed.bands} bands, which only --keep-depth keeps")
        try:
            image = open_image(path, name=str(path))
        except ImageDecodeError:
            if not probed.beyond_pillow:
                raise
            raise ImageDecodeError(f"{path}: a {probed.dtype} image that only --keep-depth reads") from None
        too_big = max_side is not None and max(image.size) > max_side
        if keep_depth and image.mode in HIGH_DEPTH_MODES:
            return _deep(prepared, image_array(image, str(path)), path if image.format == "PNG" else None, "png",
                         max_side)
    except ImageDecodeError as err:
        prepared.error = str(err)
        return prepared
    fmt = image.format
    rgb, mode = to_rgb(image)
    if probed.beyond_pillow:  # Pillow reads it, but not at its depth; --keep-depth keeps the depth
        mode = prepared.converted_from = f"{probed.dtype} {fmt} with {probed.bands} band(s), read as 8 bits"
    prepared.colour = not is_grey(hwc_array(rgb))
    low, high = min(band[0] for band in rgb.getextrema()), max(band[1] for band in rgb.getextrema())
    prepared.content = {"dtype": "uint8", "bands": 3 if prepared.colour else 1, "min": low, "max": high, "array": False}
    if fmt in KEPT_FORMATS and image.mode == "RGB" and not too_big:
        prepared.ext, prepared.data = KEPT_FORMATS[fmt], path.read_bytes()
        return prepared
    prepared.converted_from = mode or (fmt if fmt not in KEPT_FORMATS else None)
    if too_big:
        rgb.thumbnail((max_side, max_side), Image.LANCZOS)
    buffer = io.BytesIO()
    if fmt == "JPEG" and mode is None:
        rgb.save(buffer, format="JPEG", quality=95)  # a downsized JPEG stays a JPEG
        prepared.ext = "jpg"
    else:
        rgb.save(buffer, format="PNG")
        prepared.ext = "png"
    prepared.data = buffer.getvalue()
    return prepared


def _deep(prepared: Prepared, array: np.ndarray, source: Path | None, fmt: str, max_side: int | None) -> Prepared:
    """A sample kept at its depth: the file's own bytes (`source`), or, when it has to be
    shrunk or re-encoded, the array as a `fmt` file (16-bit PNG, or a TIFF of any type)."""
    if max_side is not None and max(array.shape[:2]) > max_side:
        scale = max_side / max(array.shape[:2])
        size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
        array, source = cast(resize_bands(array, size, Image.LANCZOS), array.dtype), None
    bands = array.shape[2]
    prepared.colour = bands == 3 and not is_grey(array)
    prepared.content = {**describe(array), "array": bands not in (1, 3)}
    if bands == 3 and not prepared.colour:
        prepared.content["bands"] = 1
    if source is None and fmt == "png" and not fits_png(array.dtype, bands):
        fmt = "tif"  # what a PNG cannot hold
    prepared.ext = fmt
    if source is None:
        prepared.converted_from = f"{array.dtype.name} with {bands} band(s) (depth kept)"
    prepared.data = source.read_bytes() if source is not None else encode(array, fmt)
    return prepared


def find_domains(root: Path | None, domain_a: Path | None, domain_b: Path | None) -> dict[tuple[str, str], Path]:
    """(split, domain) -> source folder, from ROOT/{train,test}{A,B} or two explicit folders."""
    if domain_a or domain_b:
        if not (domain_a and domain_b):
            raise DataError("--domain-a and --domain-b go together: give both folders")
        if domain_a.resolve() == domain_b.resolve():
            raise DataError(f"--domain-a and --domain-b are the same folder ({domain_a}): give one folder per domain")
        sources = {("train", "A"): domain_a, ("train", "B"): domain_b}
    elif root is not None:
        if not root.exists():
            raise DataError(f"--input {root} does not exist")
        if root.is_file():
            raise DataError(f"--input {root} is a file, not a folder: give the folder holding trainA/ trainB/, or "
                            "--domain-a DIR --domain-b DIR")
        sources = {key: root / name for key, name in SPLIT_FOLDERS.items() if (root / name).is_dir()}
        for domain in "AB":
            if ("train", domain) not in sources:
                raise DataError(f"{root} has no train{domain}/ folder; expected trainA/ trainB/ [testA/ testB/]")
    else:
        raise DataError("give --input ROOT or --domain-a DIR --domain-b DIR")
    for folder in sources.values():
        if not folder.is_dir():
            raise DataError(f"source folder {folder} does not exist")
    return sources


def write_shards(
    sources: dict[tuple[str, str], Path],
    output: Path,
    shard_size: int = 1000,
    max_side: int | None = None,
    overwrite: bool = False,
    workers: int = 4,
    keep_depth: bool = False,
) -> dict:
    """Write `output/{split}/{domain}-NNNNNN.tar` and `output/manifest.json`; return the manifest."""
    for option, value in (("--shard-size", shard_size), ("--workers", workers)):
        if value < 1:
            raise DataError(f"{option} {value}: must be at least 1")
    with replacement_lock(output):  # a second make_shards into it would clear this one's staging folder
        prepare_output(output, sources.values(), overwrite, staged=True)  # replaced whole once the new one is complete
        remove_leftovers(output.parent, name=output.name)  # of a killed make_shards into this output, not others'
        manifest: dict = {"format": 1, "shard_size": shard_size, "max_side": max_side, "keep_depth": keep_depth,
                          "splits": {}, "skipped": []}
        converted: Counter = Counter()
        # forkserver, not fork: a process that has run torch (the Python API, a notebook) holds threads
        # whose locks a forked child can inherit taken, and then hangs
        with atomic_folder(output) as staging, multiprocessing.get_context("forkserver").Pool(workers) as pool:
            for (split, domain), folder in sorted(sources.items()):
                files = list_images(folder)
                jobs = [(path, folder, max_side, keep_depth) for path in files]
                results = tqdm(
                    pool.imap(prepare_image, jobs, chunksize=8), total=len(jobs), desc=f"{split}/{domain}", unit="img"
                )
                entry = _write_domain(results, staging, split, domain, shard_size, manifest["skipped"], converted)
                if entry["samples"] == 0:
                    raise DataError(f"domain {split}/{domain} ({folder}) has no usable image: nothing to train on")
                entry["source"] = str(folder.resolve())
                manifest["splits"].setdefault(split, {})[domain] = entry
            manifest["converted"] = dict(sorted(converted.items()))
            write_json(staging / MANIFEST, manifest)
        return manifest


def _write_domain(results, staging: Path, split: str, domain: str, shard_size: int, skipped: list, converted: Counter) -> dict:
    (staging / split).mkdir(exist_ok=True)
    shards: list[str] = []
    counts: list[int] = []
    seen: set[str] = set()
    tally = Tally()
    writer = None
    for item in results:
        if item.error:
            skipped.append({"split": split, "domain": domain, "reason": item.error})
            continue
        if item.converted_from:
            converted[item.converted_from] += 1
        key = sample_key(item.relative, seen)
        if tally.samples % shard_size == 0:
            if writer:
                writer.close()
            name = f"{split}/{domain}-{len(shards):06d}.tar"
            shards.append(name)
            counts.append(0)
            writer = wds.TarWriter(str(staging / name), encoder=False, mtime=0)
        writer.write({"__key__": key, item.ext: item.data})
        counts[-1] += 1
        tally.add(item.content, item.colour, item.relative.as_posix(), len(item.data))
    if writer:
        writer.close()
    return {"shards": shards, "shard_samples": counts, **tally.fields()}


@dataclass
class Tally:
    """What a manifest says of a domain's samples (as `make_shards` and translated shards write
    it): their count and bytes, how many are in colour (a 1-channel domain cannot take them),
    their types, the band counts of arrays, and the value range the normalisation needs."""

    samples: int = 0
    bytes: int = 0
    colour: int = 0
    colour_example: str | None = None
    dtypes: Counter = field(default_factory=Counter)
    array_bands: Counter = field(default_factory=Counter)
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, content: dict, colour: bool, name: str, size: int) -> None:
        """One sample: `content` as `cyclegan.io.formats.describe` gives it, plus "array" (whether it is one)."""
        self.merge({"samples": 1, "bytes": size, "colour_samples": int(colour), "colour_example": name if colour else None,
                    "dtypes": {content["dtype"]: 1},
                    "array_bands": {str(content["bands"]): 1} if content["array"] else {},
                    "value_range": [content["min"], content["max"]]})

    def merge(self, fields: dict) -> None:
        """Add the samples `fields` (what `fields()` returns, e.g. of one shard) describe."""
        self.samples += fields["samples"]
        self.bytes += fields.get("bytes", 0)
        self.colour += fields.get("colour_samples", 0)
        self.colour_example = self.colour_example or fields.get("colour_example")
        self.dtypes.update(fields.get("dtypes", {}))
        self.array_bands.update(fields.get("array_bands", {}))
        if fields.get("value_range"):
            self.low, self.high = min(self.low, fields["value_range"][0]), max(self.high, fields["value_range"][1])

    def fields(self) -> dict:
        return {"samples": self.samples, "bytes": self.bytes, "colour_samples": self.colour,
                "colour_example": self.colour_example, "dtypes": dict(sorted(self.dtypes.items())),
                "array_bands": dict(sorted(self.array_bands.items())),
                "value_range": [self.low, self.high] if self.samples and self.low <= self.high else None}


def report(manifest: dict, output: Path) -> str:
    """A readable summary of what was written and what was skipped."""
    lines = [f"wrote {output}"]
    for split, domains in manifest["splits"].items():
        for domain, entry in domains.items():
            kinds = ", ".join(f"{n} {dtype}" for dtype, n in entry["dtypes"].items())
            bands = ", ".join(f"{n} with {b} band(s)" for b, n in entry["array_bands"].items())
            lines.append(
                f"  {split}/{domain}: {entry['samples']} samples ({kinds}{'; arrays: ' + bands if bands else ''}) "
                f"in {len(entry['shards'])} shard(s), {entry['bytes'] / 1e6:.1f} MB, values "
                f"{entry['value_range'][0]:g} to {entry['value_range'][1]:g}"
            )
    if manifest.get("converted"):
        modes = ", ".join(f"{mode} ({n})" for mode, n in manifest["converted"].items())
        lines.append(f"  converted (to RGB PNG unless the depth is kept): {modes}")
    if manifest["skipped"]:
        lines.append(f"  skipped {len(manifest['skipped'])} file(s):")
        lines += [f"    {item['reason']}" for item in manifest["skipped"]]
    return "\n".join(lines)
