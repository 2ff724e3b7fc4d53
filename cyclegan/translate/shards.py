"""Tar shards in, tar shards out, split across ranks: rank r translates every world-th shard.

Each input shard gives one output shard of the same name with the same sample keys (the
translation as `png`; deeper samples, see `cyclegan.arrays.is_deep`, as `npy` of the input's
type), written under a temporary name and renamed when complete, beside a small report of its
samples and skipped ones. A rerun keeps the complete shards and redoes the rest:
nothing is written twice, and since no rank waits on another while translating, shards that do
not divide evenly across ranks cost nothing but idle ranks. The main process writes
`manifest.json` once every rank is done.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from cyclegan.arrays import encode, fit_bands, image_array, is_deep, npy_bytes, open_sample
from cyclegan.data.shards import MANIFEST
from cyclegan.data.sources import check_shards, count_samples, expand_urls, is_local
from cyclegan.data.stream import sample_field
from cyclegan.errors import DataError
from cyclegan.images import ChannelMismatch, ImageDecodeError, to_pixels
from cyclegan.translate.core import DeepInput, ImageTooSmall, TranslateReport, Translator

REPORTS = ".reports"  # per-shard reports, beside the output shards


def input_shards(spec: str, domain: str) -> list[tuple[str, str]]:
    """(output name, input url) per shard: from a shard folder, every split's shards of `domain`,
    keeping their relative names; from a list or pattern, the shards by file name."""
    folder = Path(spec)
    if folder.is_dir() and not (folder / MANIFEST).is_file():  # a folder of shards without a manifest
        spec = ",".join(str(p) for p in sorted(folder.glob("*.tar")))
        if not spec:
            raise DataError(f"{folder} holds no {MANIFEST} and no .tar shards")
    if folder.is_dir() and (folder / MANIFEST).is_file():
        splits = json.loads((folder / MANIFEST).read_text()).get("splits", {})
        names = [name for split in splits.values() for name in split.get(domain, {}).get("shards", [])]
        if not names:
            raise DataError(f"{folder / MANIFEST} lists no shards of domain {domain}")
        shards = [(name, url) for name, url in zip(names, expand_urls(",".join(names), folder))]
    else:
        shards = [(shard_name(url), url) for url in expand_urls(spec)]
        if len({name for name, _ in shards}) < len(shards):
            raise DataError("input shards share file names; give them from one shard folder, or rename them")
    check_shards([url for _, url in shards], f"--input {spec}")
    return shards


def shard_name(url: str) -> str:
    """The file name of a shard's path or URL (for `pipe:` commands, of its last .tar argument)."""
    tars = [token for token in url.removeprefix("pipe:").split() if re.search(r"\.(tar|tgz|tar\.gz)$", token)]
    if not tars:
        raise DataError(f"cannot tell the shard's file name in {url!r}: it should end in .tar")
    return tars[-1].rstrip("/").rsplit("/", 1)[-1]


def strict_samples(url: str) -> Iterator[dict]:
    """The shard's samples in order; a shard that cannot be read whole raises (training skips what it
    cannot read; a translation must not call a half-read shard complete)."""
    try:
        yield from wds.tarfile_samples([{"url": url}], handler=wds.reraise_exception)
    except Exception as err:  # tar, pipe and file errors come in many classes
        raise DataError(f"shard {url} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def sample_input(sample: dict, translator: Translator) -> tuple[np.ndarray, DeepInput | None]:
    """What the generator takes of a sample: 8-bit pixels, or a deep sample's normalised values
    (and what its translation goes back to)."""
    field, name = sample_field(sample)
    is_npy = field == "npy"
    opened = open_sample(sample[field], name, is_npy)
    if isinstance(opened, Image.Image) and not is_deep(opened.mode, translator.normalize, translator.in_channels,
                                                       translator.out_channels):
        return to_pixels(opened, translator.in_channels, name), None
    array = opened if isinstance(opened, np.ndarray) else image_array(opened, name)
    deep = translator.deep_input(fit_bands(array, translator.in_channels, name, not is_npy), name)
    return deep.unit, deep


def translate_shard(translator: Translator, url: str, target: Path, batch_size: int,
                    bar: tqdm) -> tuple[int, list[str]]:
    """One shard: decoded in order, translated in batches of equal-sized images, written in the
    input's order under a temporary name, renamed when complete. Returns the samples written and
    the skipped ones."""
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    written, skipped, pending = 0, [], []

    def flush(writer: wds.TarWriter) -> int:
        by_size: dict[tuple, list[int]] = {}
        for i, (_, pixels, _) in enumerate(pending):
            by_size.setdefault((pixels.shape, pixels.dtype.str), []).append(i)
        translated: dict[int, np.ndarray] = {}
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                part = indices[start:start + batch_size]
                try:
                    translated.update(zip(part, translator.translate([pending[i][1] for i in part])))
                except ImageTooSmall as err:
                    skipped.extend(f"sample {pending[i][0]} in {url}: {err}" for i in part)
        for i, (key, _, deep) in enumerate(pending):
            if i in translated and deep is not None:
                writer.write({"__key__": key, "npy": npy_bytes(translator.restore(translated[i], deep))})
            elif i in translated:
                writer.write({"__key__": key, "png": encode(translated[i], "png")})
        bar.update(len(pending))
        pending.clear()
        return len(translated)

    try:
        with wds.TarWriter(str(partial), encoder=False, mtime=0) as writer:
            for sample in strict_samples(url):
                try:
                    pending.append((sample["__key__"], *sample_input(sample, translator)))
                except (ImageDecodeError, ChannelMismatch) as err:
                    skipped.append(str(err))
                    bar.update(1)
                if len(pending) >= 8 * batch_size:
                    written += flush(writer)
            written += flush(writer)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    report_path = target.parent / REPORTS / f"{target.name}.json"
    report_path.parent.mkdir(exist_ok=True)  # written before the shard's rename: a complete shard has one
    report_path.write_text(json.dumps({"samples": written, "skipped": skipped}))
    partial.replace(target)
    return written, skipped


def translate_shards(translator: Translator, spec: str, output: Path, domain: str, batch_size: int = 4,
                     rank: int = 0, world_size: int = 1) -> tuple[TranslateReport, list[tuple[str, str]]]:
    """This rank's share of the input shards; returns its report and every (name, url) pair.
    A shard that cannot be read is reported as failed, and the others are translated."""
    shards = input_shards(spec, domain)
    mine, report = [], TranslateReport()
    for name, url in shards[rank::world_size]:
        if is_complete(output, name):
            report.done_before += shard_report(output, name)["samples"]
        else:
            mine.append((name, url))
    with tqdm(total=expected_samples(mine), desc="translate", unit="img", disable=rank != 0) as bar:
        for name, url in mine:
            try:
                written, skipped = translate_shard(translator, url, output / name, batch_size, bar)
            except DataError as err:
                report.failed.append(str(err))
                continue
            report.written += written
            report.skipped += skipped
    return report, shards


def expected_samples(shards: list[tuple[str, str]]) -> int | None:
    """For the progress bar: the samples of local shards, counted from their headers (None if unknown)."""
    try:
        return sum(count_samples(url) for _, url in shards) if all(is_local(u) for _, u in shards) else None
    except DataError:  # a damaged shard: reported when it is translated
        return None


def is_complete(output: Path, name: str) -> bool:
    return (output / name).is_file() and report_path(output, name).is_file()


def report_path(output: Path, name: str) -> Path:
    return (output / name).parent / REPORTS / f"{Path(name).name}.json"


def shard_report(output: Path, name: str) -> dict:
    """{"samples", "skipped"} of a complete output shard."""
    return json.loads(report_path(output, name).read_text())


def write_manifest(output: Path, shards: list[tuple[str, str]], domain: str, about: dict) -> dict:
    """`manifest.json` of the output's complete shards, from their reports (earlier runs' too)."""
    complete = [(name, url) for name, url in shards if is_complete(output, name)]
    entries = {name: shard_report(output, name) for name, _ in complete}
    splits: dict = {}
    for name, _ in complete:
        split = Path(name).parent.name if "/" in name else "translated"
        entry = splits.setdefault(split, {}).setdefault(domain, {"shards": [], "shard_samples": [], "samples": 0})
        entry["shards"].append(name)
        entry["shard_samples"].append(entries[name]["samples"])
        entry["samples"] += entries[name]["samples"]
    skipped = [reason for name, _ in complete for reason in entries[name]["skipped"]]
    manifest = {"format": 1, "translation": about, "splits": splits, "skipped": skipped}
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

