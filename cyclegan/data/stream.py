"""Streaming unpaired A/B batches from tar shards to every rank and loader worker.

Each rank runs `L` lanes (one per loader worker); lane `l` of rank `r` is slot `r * L + l`
of `world * L`. Every epoch, the shards of a domain are put in an order drawn from (seed,
epoch, domain), the same on every rank, and the samples they hold, laid end to end, are cut
into one contiguous share per slot, sized by the number of samples that slot draws in the
epoch. So slots never see each other's samples within an epoch, and every image is drawn
equally often however many shards there are, however unequal their sizes, and however many
ranks and workers read them. A lane cycles through its share (the pieces of one or two
shards, usually) in an order drawn from (seed, epoch, rank, lane, domain), through a
shuffle buffer, and crops and flips each sample with an RNG seeded by its position. Batch
`i` of an epoch comes from lane `i % L`, so every rank yields exactly the same number of
batches and a resumed epoch can skip what was already trained on.

The loader is not passed through `accelerator.prepare`: it is split here already.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cyclegan.arrays import Normalize, fit_bands, is_deep, open_sample, read_array
from cyclegan.config import DataConfig
from cyclegan.data.sources import DataSources, ShardSet
from cyclegan.data.transforms import draft_size, test_transform, train_transform
from cyclegan.errors import DataError
from cyclegan.images import HIGH_DEPTH_MODES, ImageDecodeError, normalize, to_channels, to_uint8_tensor

log = logging.getLogger(__name__)
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "npy")


@dataclass(frozen=True)
class Decoding:
    """How one domain's samples become network inputs, with `channels` bands: 8-bit images through
    the official path (PIL, uint8 to the device), or, when `deep`, any sample (16-bit, float,
    `.npy` of any band count) as a float32 array normalised into [-1, 1] by `normalize`."""

    channels: int = 3
    normalize: Normalize = Normalize()
    deep: bool = False

    @classmethod
    def of(cls, shards: ShardSet | None, channels: int, normalize: str) -> Decoding:
        """Deep when the data or the config asks for it: a manifest listing deeper samples, a band
        count no image file has, or a normalisation other than the 8-bit default."""
        parsed = Normalize.parse(normalize)
        return cls(channels, parsed, is_deep(None, parsed, channels) or (shards is not None and shards.deep))


def mix_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def raw_samples(urls: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(index within its shard, sample) for each sample of the shards, in order."""
    for url in urls:
        samples = wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue)
        yield from enumerate(samples)


@dataclass(frozen=True)
class Piece:
    """Samples `first <= i < stop` of one shard (to its end when `stop` is None) whose index
    leaves `offset` modulo `stride`."""

    url: str
    first: int = 0
    stop: int | None = None
    stride: int = 1
    offset: int = 0

    def keeps(self, index: int) -> bool:
        return index >= self.first and index % self.stride == self.offset


def layout(shards: ShardSet, seed: int) -> list[int]:
    """The epoch's shard order, drawn from a seed every rank and worker shares."""
    order = list(range(len(shards.urls)))
    random.Random(seed).shuffle(order)
    return order


def counted_share(shards: ShardSet, begin: int, end: int, layout_seed: int) -> list[Piece]:
    """Samples [begin, end) of the shards laid end to end in the epoch's order."""
    share, offset = [], 0
    for index in layout(shards, layout_seed):
        count = shards.counts[index]
        first, stop = max(begin, offset), min(end, offset + count)
        if first < stop:
            share.append(Piece(shards.urls[index], first - offset, stop - offset))
        offset += count
    return share


def interleaved_share(shards: ShardSet, slot: int, n_slots: int, layout_seed: int) -> list[Piece]:
    """Without sample counts: every n-th sample of every shard, the slot that keeps a shard's
    first sample rotating along the epoch's order so that no slot is favoured."""
    return [Piece(shards.urls[index], stride=n_slots, offset=(slot + k) % n_slots)
            for k, index in enumerate(layout(shards, layout_seed))]


def share_samples(share: list[Piece], buffer: int, seed: int) -> Iterator[dict | None]:
    """An endless, shuffled stream of the raw samples (bytes, not yet decoded) of one slot's share.

    Each cycle yields every sample of the share exactly once, then None: the pieces in a new
    order, mixed through a shuffle buffer that is emptied at the end of the cycle.
    """
    rng = random.Random(mix_seed(seed, "buffer"))
    for cycle in range(2**62):
        order = share[:]
        random.Random(mix_seed(seed, "cycle", cycle)).shuffle(order)
        pending: list[dict] = []
        for piece in order:
            for index, sample in raw_samples((piece.url,)):
                if piece.stop is not None and index >= piece.stop:
                    break
                if not piece.keeps(index):
                    continue
                if len(pending) < buffer:
                    pending.append(sample)
                    continue
                pick = rng.randrange(buffer)
                yield pending[pick]
                pending[pick] = sample
        if not pending:
            raise DataError(
                f"no samples could be read from {len(share)} shard(s) ({share[0].url if share else 'none'} ...): "
                "the shards are empty or unreadable, or hold fewer samples than their counts say"
            )
        rng.shuffle(pending)
        yield from pending
        yield None


def decode(sample: dict, draft: tuple[int, int] | None = None,
           decoding: Decoding = Decoding()) -> Image.Image | np.ndarray:
    """The sample as its domain takes it (see `decode_source`), or ImageDecodeError naming the
    sample and its shard."""
    field, name = sample_field(sample)
    return decode_source(sample[field], name, field == "npy", decoding, draft)


def sample_field(sample: dict) -> tuple[str, str]:
    """The field holding a sample's image or array, and a name for messages (key and shard)."""
    name = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        raise ImageDecodeError(f"{name} has no image (fields: {', '.join(k for k in sample if not k.startswith('__'))})")
    return field, name


def decode_source(source: bytes | Path, name: str, is_npy: bool, decoding: Decoding = Decoding(),
                  draft: tuple[int, int] | None = None) -> Image.Image | np.ndarray:
    """A sample's bytes or file as its domain takes it: an 8-bit RGB or greyscale image, or, for a
    deep domain, a [-1, 1] float32 H x W x C array (see `Decoding`)."""
    if decoding.deep:
        array = fit_bands(read_array(source, name, is_npy), decoding.channels, name, not is_npy)
        return decoding.normalize.to_unit(array, name)
    image = open_sample(source, name, is_npy, draft)
    if not isinstance(image, Image.Image) or image.mode in HIGH_DEPTH_MODES:
        raise DataError(f"{name} is deeper than 8 bits (a .npy array, or a 16-bit or float image), but its shards' "
                        "manifest does not say so: give the shards with the manifest scripts/make_shards.py wrote "
                        "(data.root), or set data.normalize")
    return to_channels(image, decoding.channels, name)


def as_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A decoded, transformed sample as CHW: uint8 for an 8-bit image (normalised on the device),
    float32 in [-1, 1] for an array."""
    if isinstance(image, Image.Image):
        return to_uint8_tensor(image)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class UnpairedStream(IterableDataset):
    """Unpaired training samples for one rank: `A` and `B` as CHW tensors of `channels` (A's, B's)
    bands (uint8 for 8-bit data, normalised on the device, which moves a quarter of the bytes;
    float32 in [-1, 1] for deeper data: see `Decoding`), `key_a`, `key_b`, and `skipped`, the
    corrupt samples passed over just before this one."""

    def __init__(
        self,
        sources: DataSources,
        cfg: DataConfig,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        channels: tuple[int, int] = (3, 3),
    ) -> None:
        self.sources, self.cfg = sources, cfg
        self.decodings = {domain: Decoding.of(shards, n, normalize) for domain, shards, n, normalize
                          in zip("AB", (sources.train_a, sources.train_b), channels, cfg.normalizations)}
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lanes = max(1, cfg.num_workers)
        self.epoch, self.skip = 0, 0
        for domain, shards in (("A", sources.train_a), ("B", sources.train_b)):
            slots = [(r, lane) for r in range(world_size) for lane in range(self.lanes) if self._draws(lane)]
            bounds = [self._share_bounds(shards, r, lane) for r, lane in slots] if shards.counts else []
            if any(first == stop for first, stop in bounds):
                raise DataError(
                    f"train domain {domain} holds {sum(shards.counts)} sample(s) in its shards: too few to give each "
                    f"of the {world_size} x {self.lanes} loader slots (ranks x data.num_workers) one of its own"
                )

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
            shared_seed = mix_seed(self.seed, self.epoch, domain)
            if shards.counts:
                share = counted_share(shards, *self._share_bounds(shards, self.rank, lane), shared_seed)
            else:
                n_slots = self.world_size * self.lanes
                share = interleaved_share(shards, self.rank * self.lanes + lane, n_slots, shared_seed)
            streams[domain] = self._good_images(share, seeds[domain], self.decodings[domain])
        for position in range(len(owned) * self.batch_size):
            sample = {"skipped": 0}
            for domain, stream in streams.items():
                key, image, skipped = next(stream)
                sample["skipped"] += skipped
                if position < done * self.batch_size:
                    continue
                rng = random.Random(mix_seed(seeds[domain], position))
                sample[domain] = as_tensor(train_transform(image, rng, self.cfg))
                sample[f"key_{domain.lower()}"] = key
            if position >= done * self.batch_size:
                yield sample

    def _draws(self, lane: int) -> int:
        """Samples lane `lane` of any rank draws per epoch (lanes differ by at most one batch)."""
        return len(range(lane, self.batches_per_epoch, self.lanes)) * self.batch_size

    def _share_bounds(self, shards: ShardSet, rank: int, lane: int) -> tuple[int, int]:
        """The share of the samples of one slot, in proportion to the samples it draws per epoch,
        so that every image is drawn equally often."""
        per_rank = self.batches_per_epoch * self.batch_size
        before = rank * per_rank + sum(self._draws(other) for other in range(lane))
        total, draws = sum(shards.counts), self.world_size * per_rank
        return total * before // draws, total * (before + self._draws(lane)) // draws

    def _good_images(self, share: list[Piece], seed: int, decoding: Decoding) -> Iterator[tuple[str, object, int]]:
        """(key, decoded sample, corrupt samples skipped just before it), endlessly."""
        skipped, good_in_cycle = 0, 0
        for sample in share_samples(share, self.cfg.shuffle_buffer, seed):
            if sample is None:  # the end of a cycle through the share
                if not good_in_cycle:
                    raise DataError(f"every sample this loader slot reads from {share[0].url} ... is corrupt")
                good_in_cycle = 0
                continue
            try:
                image = decode(sample, draft_size(self.cfg), decoding)
            except ImageDecodeError as err:
                log.warning("skipping corrupt sample: %s", err)
                skipped += 1
                continue
            good_in_cycle += 1
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


def iter_test_images(shards: ShardSet, size: int, rank: int = 0, world_size: int = 1, limit: int | None = None,
                     channels: int = 3, normalize: str = "dtype"):
    """(key, [-1, 1] tensor of `channels` bands) for this rank's share of the first `limit`
    samples of a test split, in shard order: rank r takes positions r, r + world_size, ..."""
    decoding = Decoding.of(shards, channels, normalize)
    for position, (_, sample) in enumerate(raw_samples(shards.urls)):
        if limit is not None and position >= limit:
            return
        if position % world_size != rank:
            continue
        try:
            image = decode(sample, decoding=decoding)
        except ImageDecodeError as err:
            log.warning("skipping corrupt test sample: %s", err)
            continue
        yield sample["__key__"], to_unit_tensor(test_transform(image, size))


def to_unit_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A decoded sample as a CHW tensor in [-1, 1] of torch's default dtype."""
    tensor = as_tensor(image)
    return normalize(tensor) if tensor.dtype == torch.uint8 else tensor.to(torch.get_default_dtype())
