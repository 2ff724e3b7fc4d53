"""Where the shards of each split and domain are, and how many samples each shard holds.

Shards come from `data.root`'s manifest (written by scripts/make_shards.py, or by hand: it may
list remote URLs) or from explicit lists: comma-separated paths, brace patterns or any URL
WebDataset opens. Training needs the sample count of every shard to give each loader slot an
equal share: the manifest holds them, local shards given without one are counted from their
tar headers, and remote shards given without one have none (the loader then has every slot
read every shard; see `cyclegan.data.stream`).
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from cyclegan.data.normalize import Normalize
from cyclegan.config import DataConfig
from cyclegan.data.shards import MANIFEST
from cyclegan.data.shares import group_key
from cyclegan.errors import DataError
from cyclegan.io.records import read_json, require
from cyclegan.io.samples import manifest_deep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split and domain, and how many samples they hold.

    `counts` holds the samples of each shard: empty for test splits (read in order) and for
    remote training shards given without a manifest. `colour`: how many samples are in colour
    and one of them; `dtypes`: samples per value type; `array_bands`: `.npy` samples per band
    count; all as the manifest says (None: unknown, without one or from an older one).
    """

    urls: tuple[str, ...]
    samples: int
    counts: tuple[int, ...] = ()
    colour: tuple[int, str | None] | None = None
    dtypes: dict[str, int] | None = None
    array_bands: dict[str, int] | None = None
    value_range: tuple[float, float] | None = None

    @property
    def deep(self) -> bool:
        """Whether the manifest lists samples other than 8-bit images (arrays, 16-bit, float)."""
        return manifest_deep(self.dtypes, self.array_bands)


@dataclass(frozen=True)
class DataSources:
    train_a: ShardSet
    train_b: ShardSet
    test_a: ShardSet | None
    test_b: ShardSet | None


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def expand_urls(spec: str, base: Path | None = None) -> list[str]:
    """Comma-separated paths, brace patterns (`A-{000000..000009}.tar`) or URLs -> a list."""
    urls = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for url in braceexpand(part):
            if is_local(url) and base is not None and not Path(url).is_absolute():
                url = str(base / url)
            urls.append(url)
    return urls


def check_shards(urls: list[str], what: str) -> None:
    """Fail before training when local shards are missing; remote ones are checked when read."""
    if not urls:
        raise DataError(f"no shards given for {what}")
    local = [u for u in urls if is_local(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} shard(s) for {what} do not exist: {shown}")
    not_tar = [u for u in local if not tarfile.is_tarfile(u)]
    if not_tar:
        raise DataError(f"{len(not_tar)} shard(s) for {what} are not tar files: {', '.join(not_tar[:5])}")


def find_sources(cfg: DataConfig) -> DataSources:
    """Shard lists and sample counts from `data.root`'s manifest and/or explicit lists."""
    manifest, shard_size, root = {}, 0, Path(cfg.root) if cfg.root else None
    explicit = bool(cfg.train_a and cfg.train_b)
    listing = f"{root / MANIFEST}" if root is not None else "the config"
    if root is not None and (root / MANIFEST).is_file():
        written = read_json(root / MANIFEST, required=("splits",))
        manifest, shard_size = require(written["splits"], (), f"{listing} (splits)"), written.get("shard_size", 0)
    elif root is not None and not explicit:
        raise DataError(
            f"data.root={cfg.root} has no {MANIFEST}; make one with cyclegan-make-shards, "
            "or give data.train_a/data.train_b (and data.num_a/data.num_b for remote shards)"
        )
    elif not explicit:
        raise DataError("no training data: set data.root (a shard folder) or data.train_a and data.train_b")

    def pick(split: str, domain: str, spec: str | None, count: int, required: bool) -> ShardSet | None:
        entry = require(manifest.get(split, {}), (), f"{listing} (splits.{split})").get(domain)
        what = f"{split} domain {domain}"
        if spec:
            urls = expand_urls(spec)
            check_shards(urls, what)
            counts = count_local_shards(urls, what) if split == "train" else ()
            shards = ShardSet(tuple(urls), count or sum(counts), counts)
        elif entry is not None:
            require(entry, {"shards": list, "samples": int}, f"{listing} (splits.{split}.{domain})")
            urls = expand_urls(",".join(entry["shards"]), root)
            check_shards(urls, what)
            colour = (entry["colour_samples"], entry.get("colour_example")) if "colour_samples" in entry else None
            shards = ShardSet(tuple(urls), entry["samples"], manifest_counts(entry, shard_size), colour,
                              entry.get("dtypes"), entry.get("array_bands"),
                              tuple(entry["value_range"]) if entry.get("value_range") else None)
        elif required:
            raise DataError(f"no shards for {what} in {listing}")
        else:
            return None
        if split == "train" and shards.samples <= 0:
            key = f"data.num_{domain.lower()}"
            raise DataError(f"{what} has no samples (with remote shard lists, set {key} to the number of images)")
        return shards

    return DataSources(
        train_a=pick("train", "A", cfg.train_a, cfg.num_a, True),
        train_b=pick("train", "B", cfg.train_b, cfg.num_b, True),
        test_a=pick("test", "A", cfg.test_a, 0, False),
        test_b=pick("test", "B", cfg.test_b, 0, False),
    )


def check_samples(sources: DataSources, channels: tuple[int, int], normalizations: tuple[str, str]) -> list[str]:
    """Before any work, on every rank alike, from the manifest: samples that cannot fit their
    domain's channels (colour in a greyscale domain, arrays of another band count, image files
    where only arrays have that many bands), and float samples with `data.normalize=dtype`.
    Without a manifest, the loader refuses the first such sample it meets. Returns warnings: a
    `range:` window that the data's recorded values miss or fill less than a sixteenth of."""
    warnings = []
    settings = ("data.normalize", "data.normalize_b" if normalizations[1] != normalizations[0] else "data.normalize")
    for domain, n, key, normalize, setting in zip("AB", channels, ("model.input_nc", "model.output_nc"),
                                                  normalizations, settings):
        window = Normalize.parse(normalize)
        for split, shards in (("train", getattr(sources, f"train_{domain.lower()}")),
                              ("test", getattr(sources, f"test_{domain.lower()}"))):
            if shards is None:
                continue
            what = f"{split} domain {domain}"
            if n == 1 and shards.colour and shards.colour[0]:
                count, example = shards.colour
                raise DataError(f"{what} holds {count} colour image(s) (e.g. {example}), but "
                                f"{key}=1 makes it greyscale: convert them to greyscale and make the shards "
                                f"again, or set {key}=3")
            other = {b: c for b, c in (shards.array_bands or {}).items() if int(b) != n}
            if other:
                found = ", ".join(f"{c} with {b}" for b, c in other.items())
                raise DataError(f"{what} holds .npy arrays of other band counts than {key}={n} ({found}): "
                                f"set {key} to their band count, or make their shards again with {n} bands")
            images = shards.samples - sum((shards.array_bands or {}).values())
            if n not in (1, 3) and shards.dtypes is not None and images > 0:
                raise DataError(f"{what} holds {images} image file(s), which have 1 or 3 channels, but {key}={n}: "
                                f"store {n}-band samples as .npy arrays")
            floats = sum(c for dtype, c in (shards.dtypes or {}).items() if dtype.startswith("float"))
            if floats and normalize == "dtype":
                raise DataError(f"{what} holds {floats} float sample(s), which have no type range to normalise by: "
                                f"set {setting} to range:LO,HI (a fixed window) or percentile:P1,P99")
            if window.kind == "range" and shards.value_range is not None:
                low, high = shards.value_range
                inside = min(high, window.high) - max(low, window.low)
                if inside < (window.high - window.low) / 16:
                    warnings.append(f"{what} holds values from {low:g} to {high:g}, which fill "
                                    f"{max(inside, 0) / (window.high - window.low):.0%} of {setting}={normalize} "
                                    "(were the shards made without --keep-depth?)")
    return warnings


def manifest_counts(entry: dict, shard_size: int) -> tuple[int, ...]:
    """Samples per shard from a manifest; older ones imply them (every shard full but the last)."""
    if "shard_samples" in entry:
        return tuple(entry["shard_samples"])
    full = len(entry["shards"]) - 1
    counts = (shard_size,) * full + (entry["samples"] - full * shard_size,)
    if full and (not shard_size or counts[-1] <= 0):
        raise DataError(f"the manifest lists {entry['samples']} samples in {len(entry['shards'])} shard(s) of "
                        f"{shard_size}: they do not add up; write it again with cyclegan-make-shards")
    return counts


def count_local_shards(urls: list[str], what: str) -> tuple[int, ...]:
    """Samples per local shard, from tar headers; () when any shard is remote (not counted)."""
    if not all(is_local(u) for u in urls):
        log.warning("%s: remote shards without a manifest have no sample counts, so every loader slot reads every "
                    "shard and keeps its share of samples; list them in a manifest with their counts to read "
                    "each shard once", what)
        return ()
    return tuple(count_samples(u) for u in urls)


def count_samples(path: str) -> int:
    """The samples in one tar shard, read from its headers alone, grouped as the loader reads them
    (`cyclegan.data.shares.group_key`)."""
    count, previous = 0, None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                key = group_key(member.name) if member.isreg() else None
                if key is not None and key != previous:
                    count, previous = count + 1, key
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"shard {path} cannot be read to count its samples ({err}); it may be truncated") from None
    return count
