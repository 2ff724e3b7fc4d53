"""Streaming unpaired A/B batches from tar shards to every rank and loader worker.

Each rank runs `L` lanes (one per loader worker). Lane `l` of rank `r` is slot
`r * L + l` of `world * L`: with enough shards a slot owns every n-th shard, otherwise it
reads every shard and keeps every n-th sample, so slots never see each other's samples.
A lane cycles through its shards in an order drawn from (seed, epoch, rank, lane, domain),
through a shuffle buffer, and crops and flips each sample with an RNG seeded by its
position. Batch `i` of an epoch comes from lane `i % L`, so every rank yields exactly the
same number of batches and a resumed epoch can skip what was already trained on.

The loader is not passed through `accelerator.prepare`: it is split here already.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import signal
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cyclegan.config import DataConfig
from cyclegan.data.shards import MANIFEST
from cyclegan.data.transforms import draft_size, test_transform, train_transform
from cyclegan.errors import DataError
from cyclegan.images import ImageDecodeError, open_image, to_rgb, to_tensor, to_uint8_tensor

log = logging.getLogger(__name__)
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split and domain, and how many samples they hold."""

    urls: tuple[str, ...]
    samples: int


@dataclass(frozen=True)
class DataSources:
    train_a: ShardSet
    train_b: ShardSet
    test_a: ShardSet | None
    test_b: ShardSet | None


def mix_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def expand_urls(spec: str, base: Path | None = None) -> list[str]:
    """Comma-separated paths, brace patterns (`A-{000000..000009}.tar`) or URLs -> a list."""
    urls = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for url in braceexpand(part):
            is_local = "://" not in url and not url.startswith("pipe:")
            if is_local and base is not None and not Path(url).is_absolute():
                url = str(base / url)
            urls.append(url)
    return urls


def check_shards(urls: list[str], what: str) -> None:
    """Fail before training when local shards are missing; remote ones are checked when read."""
    if not urls:
        raise DataError(f"no shards given for {what}")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} shard(s) for {what} do not exist: {shown}")
    not_tar = [u for u in local if not tarfile.is_tarfile(u)]
    if not_tar:
        raise DataError(f"{len(not_tar)} shard(s) for {what} are not tar files: {', '.join(not_tar[:5])}")


def find_sources(cfg: DataConfig) -> DataSources:
    """Shard lists and sample counts from `data.root`'s manifest and/or explicit lists."""
    manifest, root = {}, Path(cfg.root) if cfg.root else None
    explicit = bool(cfg.train_a and cfg.train_b)
    if root is not None and (root / MANIFEST).is_file():
        manifest = json.loads((root / MANIFEST).read_text()).get("splits", {})
    elif root is not None and not explicit:
        raise DataError(
            f"data.root={cfg.root} has no {MANIFEST}; make one with scripts/make_shards.py, "
            "or give data.train_a/data.train_b with data.num_a/data.num_b"
        )
    elif not explicit:
        raise DataError("no training data: set data.root (a shard folder) or data.train_a and data.train_b")

    def pick(split: str, domain: str, spec: str | None, count: int, required: bool) -> ShardSet | None:
        entry = manifest.get(split, {}).get(domain)
        what = f"{split} domain {domain}"
        if spec:
            urls = expand_urls(spec)
            samples = count or (entry["samples"] if entry else 0)
        elif entry:
            urls, samples = expand_urls(",".join(entry["shards"]), root), entry["samples"]
        elif required:
            raise DataError(f"no shards for {what} in {root / MANIFEST if root else 'the config'}")
        else:
            return None
        check_shards(urls, what)
        if split == "train" and samples <= 0:
            key = f"data.num_{domain.lower()}"
            raise DataError(f"{what} has no samples; with explicit shard lists set {key} to the number of images")
        return ShardSet(tuple(urls), samples)

    return DataSources(
        train_a=pick("train", "A", cfg.train_a, cfg.num_a, True),
        train_b=pick("train", "B", cfg.train_b, cfg.num_b, True),
        test_a=pick("test", "A", cfg.test_a, 0, False),
        test_b=pick("test", "B", cfg.test_b, 0, False),
    )


def raw_samples(urls: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(index within its shard, sample) for each sample of the shards, in order."""
    for url in urls:
        samples = wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue)
        yield from enumerate(samples)


def lane_samples(urls: tuple[str, ...], slot: int, n_slots: int, buffer: int, seed: int) -> Iterator[dict]:
    """An endless, shuffled stream of this slot's raw samples (bytes, not yet decoded)."""
    if len(urls) >= n_slots:
        own, stride, offset = list(urls[slot::n_slots]), 1, 0
    else:
        own, stride, offset = list(urls), n_slots, slot
    rng = random.Random(mix_seed(seed, "buffer"))
    pending: list[dict] = []
    for cycle in range(2**62):
        order = own[:]
        random.Random(mix_seed(seed, "cycle", cycle)).shuffle(order)
        found = 0
        for index, sample in raw_samples(tuple(order)):
            if index % stride != offset:
                continue
            found += 1
            if len(pending) < buffer:
                pending.append(sample)
                continue
            pick = rng.randrange(buffer)
            yield pending[pick]
            pending[pick] = sample
        if found == 0:
            raise DataError(
                f"no samples could be read for loader slot {slot} of {n_slots} from {len(own)} shard(s) "
                f"({own[0]} ...): the shards are empty or unreadable, or hold fewer samples than ranks x workers"
            )


def decode(sample: dict, draft: tuple[int, int] | None = None):
    """The sample's image as RGB, or ImageDecodeError naming the sample and its shard."""
    name = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        raise ImageDecodeError(f"{name} has no image (fields: {', '.join(k for k in sample if not k.startswith('__'))})")
    return to_rgb(open_image(sample[field], name=name, draft=draft))[0]


class UnpairedStream(IterableDataset):
    """Unpaired training samples for one rank: `A` and `B` as CHW uint8 (normalised on the
    device, which moves a quarter of the bytes), `key_a`, `key_b`, and `skipped`, the corrupt
    samples passed over just before this one."""

    def __init__(
        self,
        sources: DataSources,
        cfg: DataConfig,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.sources, self.cfg = sources, cfg
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lanes = max(1, cfg.num_workers)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Start `epoch` at batch `skip_batches` (non-zero when resuming mid-epoch)."""
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        lane = ((info.id if info else 0) + self.skip) % self.lanes
        owned = range(lane, self.batches_per_epoch, self.lanes)
        done = sum(1 for i in owned if i < self.skip)
        streams, seeds = {}, {}
        for domain, shards in (("A", self.sources.train_a), ("B", self.sources.train_b)):
            seeds[domain] = mix_seed(self.seed, self.epoch, self.rank, lane, domain)
            streams[domain] = self._good_images(shards, lane, seeds[domain])
        for position in range(len(owned) * self.batch_size):
            sample = {"skipped": 0}
            for domain, stream in streams.items():
                key, image, skipped = next(stream)
                sample["skipped"] += skipped
                if position < done * self.batch_size:
                    continue
                rng = random.Random(mix_seed(seeds[domain], position))
                sample[domain] = to_uint8_tensor(train_transform(image, rng, self.cfg))
                sample[f"key_{domain.lower()}"] = key
            if position >= done * self.batch_size:
                yield sample

    def _good_images(self, shards: ShardSet, lane: int, seed: int) -> Iterator[tuple[str, object, int]]:
        """(key, RGB image, corrupt samples skipped just before it), endlessly."""
        slot, n_slots = self.rank * self.lanes + lane, self.world_size * self.lanes
        skipped = 0
        for sample in lane_samples(shards.urls, slot, n_slots, self.cfg.shuffle_buffer, seed):
            try:
                image = decode(sample, draft_size(self.cfg))
            except ImageDecodeError as err:
                log.warning("skipping corrupt sample: %s", err)
                skipped += 1
                continue
            yield sample["__key__"], image, skipped
            skipped = 0


def epoch_steps(sources: DataSources, global_batch: int) -> int:
    """Optimizer steps per epoch: max(|A|, |B|) samples over the global batch, as the paper."""
    return max(1, math.ceil(max(sources.train_a.samples, sources.train_b.samples) / global_batch))


WORKER_GRACE_SECONDS = 60


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A scheduler's SIGTERM or a Ctrl-C reaches every process of the job, loader workers too.
    Workers let the training process stop cleanly: they ignore SIGINT and SIGUSR1, and on
    SIGTERM exit only after a grace period, in which the trainer checkpoints and shuts them
    down itself (a worker that ignored SIGTERM for good could block the process's exit)."""
    for signum in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)

    def exit_later(signum, frame) -> None:
        timer = threading.Timer(WORKER_GRACE_SECONDS, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, exit_later)


def train_loader(stream: UnpairedStream, pin_memory: bool = False) -> DataLoader:
    workers = stream.cfg.num_workers
    return DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        worker_init_fn=leave_stop_signals_to_the_trainer,
        generator=torch.Generator(),  # keeps the loader's seed draws off the global RNG
    )


def iter_test_images(shards: ShardSet, size: int, rank: int = 0, world_size: int = 1, limit: int | None = None):
    """(key, [-1, 1] tensor) for this rank's share of the first `limit` samples of a test
    split, in shard order: rank r takes positions r, r + world_size, ..."""
    for position, (_, sample) in enumerate(raw_samples(shards.urls)):
        if limit is not None and position >= limit:
            return
        if position % world_size != rank:
            continue
        try:
            image = decode(sample)
        except ImageDecodeError as err:
            log.warning("skipping corrupt test sample: %s", err)
            continue
        yield sample["__key__"], to_tensor(test_transform(image, size))
