"""Tar shards in, tar shards out, split across ranks: rank r translates every world-th shard.

Each input shard gives one output shard of the same name with the same sample keys (the
translation as `png`; in a split whose manifest lists deeper samples, see `shard_decodings`,
every sample as `npy` of its input's type), written under a temporary name and renamed when
complete, beside a small report of its
samples and skipped ones. A rerun keeps the complete shards and redoes the rest:
nothing is written twice, and since no rank waits on another while translating, shards that do
not divide evenly across ranks cost nothing but idle ranks. The main process writes
`manifest.json` once every rank is done.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from cyclegan.data.shards import MANIFEST, Tally
from cyclegan.data.sources import check_shards, count_samples, expand_urls, is_local
from cyclegan.errors import DataError, UserError
from cyclegan.images import ChannelMismatch, ImageDecodeError
from cyclegan.io.files import atomic_path
from cyclegan.io.records import read_json, require, write_json
from cyclegan.io.formats import describe, encode
from cyclegan.io.samples import Decoding, is_grey, manifest_deep, restore
from cyclegan.translate.core import ImageTooSmall, TranslateReport, Translator

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
        names = [name for entry in domain_entries(folder, domain) for name in entry["shards"]]
        if not names:
            raise DataError(f"{folder / MANIFEST} lists no shards of domain {domain}")
        shards = [(name, url) for name, url in zip(names, expand_urls(",".join(names), folder))]
    else:
        shards = [(shard_name(url), url) for url in expand_urls(spec)]
        if len({name for name, _ in shards}) < len(shards):
            raise DataError("input shards share file names; give them from one shard folder, or rename them")
    check_shards([url for _, url in shards], f"--input {spec}")
    return shards


def domain_entries(folder: Path, domain: str) -> list[dict]:
    """The entries of `domain` in a shard folder's manifest, one per split that holds it."""
    manifest = folder / MANIFEST
    splits = require(read_json(manifest, required=("splits",))["splits"], (), f"{manifest} (splits)")
    entries = [require(split, (), f"{manifest} (splits.{name})").get(domain) for name, split in splits.items()]
    return [require(entry, {"shards": list}, f"{manifest} ({domain} domain)") for entry in entries if entry is not None]


def shard_decodings(translator: Translator, spec: str, domain: str,
                    shards: list[tuple[str, str]]) -> dict[str, Decoding]:
    """How each shard is read (`Translator.domain`), decided per split as training and evaluation
    decide: from its split's manifest entry (`dtypes`, `array_bands`). Without a manifest, or in
    an entry without `dtypes`, the domain is not deep and each sample's own depth decides, as in
    training: the shards are not read before they are translated."""
    folder = Path(spec)
    by_name: dict[str, Decoding] = {}
    if folder.is_dir() and (folder / MANIFEST).is_file():
        for entry in domain_entries(folder, domain):
            decoding = translator.domain([manifest_deep(entry.get("dtypes"), entry.get("array_bands"))])
            by_name.update(dict.fromkeys(entry["shards"], decoding))
    plain = translator.domain([manifest_deep(None, None)])
    return {name: by_name.get(name, plain) for name, _ in shards}


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


def translate_shard(translator: Translator, url: str, target: Path, batch_size: int, bar: tqdm,
                    decoding: Decoding) -> tuple[int, list[str]]:
    """One shard: decoded in order as its split of the domain is (`decoding`, from
    `shard_decodings`), translated in batches of equal-sized images, written in the
    input's order under a temporary name, renamed when complete, with a report of what it holds
    (as the manifest describes samples, see `Tally`). Returns the samples written and the
    skipped ones."""
    skipped, pending, tally = [], [], Tally()

    def flush(writer: wds.TarWriter) -> int:
        by_size: dict[tuple, list[int]] = {}
        for i, (_, _, pixels) in enumerate(pending):
            by_size.setdefault((pixels.shape, pixels.dtype.str), []).append(i)
        translated: dict[int, np.ndarray] = {}
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                part = indices[start:start + batch_size]
                try:
                    translated.update(zip(part, translator.translate([pending[i][2] for i in part])))
                except ImageTooSmall as err:
                    skipped.extend(f"sample {pending[i][0]} in {url}: {err}" for i in part)
        for i, (key, sample, _) in enumerate(pending):
            if i in translated:  # a deep domain's samples as arrays of their own type, an 8-bit one's as PNGs
                field = "npy" if sample.deep else "png"
                array = restore(translated[i], sample, translator.output)
                data = encode(array, field)
                writer.write({"__key__": key, field: data})
                colour = field == "png" and array.shape[2] == 3 and not is_grey(array)
                tally.add({**describe(array), "array": field == "npy"}, colour, key, len(data))
        bar.update(len(pending))
        pending.clear()

    with atomic_path(target) as partial:
        with wds.TarWriter(str(partial), encoder=False, mtime=0) as writer:
            for sample in strict_samples(url):
                try:
                    decoded = translator.read(sample, decoding=decoding)
                    pending.append((sample["__key__"], decoded, decoded.array()))
                except (ImageDecodeError, ChannelMismatch) as err:
                    skipped.append(str(err))
                    bar.update(1)
                if len(pending) >= 8 * batch_size:
                    flush(writer)
            flush(writer)
        # written before the shard's rename: a complete shard has one
        write_json(report_path(target.parent, target.name), {**tally.fields(), "skipped": skipped})
    return tally.samples, skipped


def translate_shards(translator: Translator, spec: str, output: Path, domain: str, batch_size: int = 4,
                     rank: int = 0, world_size: int = 1,
                     checked: Callable[[bool], None] | None = None) -> tuple[TranslateReport, list[tuple[str, str]]]:
    """This rank's share of the input shards; returns its report and every (name, url) pair.
    A shard that cannot be read is reported as failed, and the others are translated. `checked`
    is called once the inputs are listed and checked, before the first output is written, with
    whether any shard takes the deep path (`shard_decodings`), for the output's record."""
    shards = input_shards(spec, domain)
    for name, url in shards:  # every rank checks every shard, so that all stop before any work
        if is_local(url) and (output / name).resolve() == Path(url).resolve():
            raise UserError(f"translating shard {url} into {output} would overwrite it: choose another --output")
    decodings = shard_decodings(translator, spec, domain, shards)
    if checked is not None:
        checked(any(decoding.all_deep for decoding in decodings.values()))
    mine, report = [], TranslateReport()
    for name, url in shards[rank::world_size]:
        if is_complete(output, name):
            report.done_before += shard_report(output, name)["samples"]
        else:
            mine.append((name, url))
    with tqdm(total=expected_samples(mine), desc="translate", unit="img", disable=rank != 0) as bar:
        for name, url in mine:
            try:
                written, skipped = translate_shard(translator, url, output / name, batch_size, bar,
                                                  decodings[name])
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
    """What a complete output shard holds: "samples", "skipped", and the manifest's fields (`Tally`)."""
    return read_json(report_path(output, name), required=("samples", "skipped"))


def write_manifest(output: Path, shards: list[tuple[str, str]], domain: str, about: dict) -> dict:
    """`manifest.json` of the output's complete shards, from their reports (earlier runs' too),
    with the fields `make_shards` writes, under `domain`: the domain the outputs belong to."""
    complete = [name for name, _ in shards if is_complete(output, name)]
    reports = {name: shard_report(output, name) for name in complete}
    splits: dict = {}
    for name in complete:
        split = Path(name).parent.name if "/" in name else "translated"
        entry = splits.setdefault(split, {}).setdefault(domain, {"shards": [], "shard_samples": [], "tally": Tally()})
        entry["shards"].append(name)
        entry["shard_samples"].append(reports[name]["samples"])
        entry["tally"].merge(reports[name])
    for domains in splits.values():
        domains[domain] |= domains[domain].pop("tally").fields()
    skipped = [reason for name in complete for reason in reports[name]["skipped"]]
    manifest = {"format": 1, "translation": about, "splits": splits, "skipped": skipped}
    write_json(output / MANIFEST, manifest)
    return manifest

