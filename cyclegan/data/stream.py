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
batches, and a resumed lane seeks to the position its rank checkpointed (see
`cyclegan.data.shares`, which also keeps an image's draws independent of where it lies in its shard).

The loader is not passed through `accelerator.prepare`: it is split here already.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import signal
import threading
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cyclegan.config import DataConfig
from cyclegan.data.shares import Piece, ShareStream, counted_share, interleaved_share, mix_seed, read_piece
from cyclegan.data.sources import DataSources, ShardSet
from cyclegan.data.transforms import draft_size, test_transform, train_transform
from cyclegan.errors import DataError
from cyclegan.images import ImageDecodeError
from cyclegan.io.samples import Decoding, as_tensor, domain_decoding, read_sample, to_unit_tensor

log = logging.getLogger(__name__)


def decode(sample: dict, decoding: Decoding, draft: tuple[int, int] | None = None) -> Image.Image | np.ndarray:
    """The sample's pixels as its domain takes them (`cyclegan.io.samples.read_sample`), or
    ImageDecodeError naming the sample and its shard. A deeper sample in a domain whose manifest
    does not say so is refused: the batch would mix two kinds."""
    decoded = read_sample(sample, decoding, draft=draft)
    if decoded.deep and not decoding.all_deep:
        raise DataError(f"sample {sample.get('__key__')} in {sample.get('__url__')} is deeper than 8 bits (a .npy "
                        "array, or a 16-bit or float image), but its shards' manifest does not say so: give the "
                        "shards with the manifest cyclegan-make-shards wrote (data.root), or set data.normalize")
    return decoded.pixels


class UnpairedStream(IterableDataset):
    """Unpaired training samples for one rank: `A` and `B` as CHW tensors of `channels` (A's, B's)
    bands (uint8 for 8-bit data, normalised on the device, which moves a quarter of the bytes;
    float32 in [-1, 1] for deeper data: see `Decoding`), `key_a`, `key_b`, `skipped`, the corrupt
    samples passed over just before this one, and where it came from: `lane`, the lane that drew
    it, and `read_A`, `read_B`, the raw samples (corrupt ones included) that lane had read of each
    domain in the epoch through this one, which `advance` keeps for a checkpoint."""

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
        self.decodings = {domain: domain_decoding(n, normalize, [shards.deep]) for domain, shards, n, normalize
                          in zip("AB", (sources.train_a, sources.train_b), channels, cfg.normalizations)}
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.lanes = max(1, cfg.num_workers)
        self.epoch, self.skip, self.read = 0, 0, {}
        for domain, shards in (("A", sources.train_a), ("B", sources.train_b)):
            slots = [(r, lane) for r in range(world_size) for lane in range(self.lanes) if self._draws(lane)]
            bounds = [self._share_bounds(shards, r, lane) for r, lane in slots] if shards.counts else []
            if any(first == stop for first, stop in bounds):
                raise DataError(
                    f"train domain {domain} holds {sum(shards.counts)} sample(s) in its shards: too few to give each "
                    f"of the {world_size} x {self.lanes} loader slots (ranks x data.num_workers) one of its own"
                )

    def set_epoch(self, epoch: int, skip_batches: int = 0, position: dict | None = None) -> None:
        """Start `epoch` at batch `skip_batches` (non-zero when resuming mid-epoch). `position`
        (from `advance`) says how many raw samples each lane had read, corrupt ones included, so
        that a lane seeks past them; without one that fits (another split after an elastic resume)
        a lane assumes it had met no corrupt sample. A checkpoint of a version before positions were
        saved drew its epoch in another order (one buffer RNG per lane, tar order in the last pass):
        resumed mid-epoch, the rest of that epoch repeats some images and skips others."""
        self.epoch, self.skip = epoch, skip_batches
        fits = position and (position["epoch"], position["layout"]) == (epoch, [self.world_size, self.lanes])
        self.read = dict(position["read"]) if fits else {}

    def advance(self, position: dict | None, batch: dict) -> dict:
        """The stream's position after `batch`, the latest the training loop has taken (a rank
        checkpoints it with its pools). A position of another epoch or another layout (restored by
        an elastic resume) is started afresh: its lanes' counts do not describe this split."""
        layout = [self.world_size, self.lanes]
        if not position or position["epoch"] != self.epoch or list(position["layout"]) != layout:
            position = {"epoch": self.epoch, "layout": layout, "read": {}}
        position["read"][int(batch["lane"][-1])] = {d: int(batch[f"read_{d}"][-1]) for d in "AB"}
        return position

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        lane = ((info.id if info else 0) + self.skip) % self.lanes
        owned = range(lane, self.batches_per_epoch, self.lanes)
        done = sum(1 for i in owned if i < self.skip) * self.batch_size
        read = self.read.get(lane, {"A": done, "B": done})
        streams, seeds = {}, {}
        for domain, shards in (("A", self.sources.train_a), ("B", self.sources.train_b)):
            seeds[domain] = mix_seed(self.seed, self.epoch, self.rank, lane, domain)
            shared_seed = mix_seed(self.seed, self.epoch, domain)
            if shards.counts:
                bounds = self._share_bounds(shards, self.rank, lane)
                share = counted_share(shards.urls, shards.counts, *bounds, shared_seed)
            else:
                n_slots = self.world_size * self.lanes
                share = interleaved_share(shards.urls, self.rank * self.lanes + lane, n_slots, shared_seed)
            stream = ShareStream(share, self.cfg.shuffle_buffer, seeds[domain], self._draws(lane))
            streams[domain] = self._good_images(stream, read[domain], self.decodings[domain])
        for position in range(done, len(owned) * self.batch_size):
            sample = {"skipped": 0, "lane": lane}
            for domain, stream in streams.items():
                key, image, skipped, sample[f"read_{domain}"] = next(stream)
                sample["skipped"] += skipped
                rng = random.Random(mix_seed(seeds[domain], position))
                sample[domain] = as_tensor(train_transform(image, rng, self.cfg))
                sample[f"key_{domain.lower()}"] = key
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

    def _good_images(self, stream: ShareStream, start: int, decoding: Decoding
                     ) -> Iterator[tuple[str, object, int, int]]:
        """(key, decoded sample, corrupt samples skipped just before it, raw samples read through
        it), endlessly, from raw sample `start` of the lane's epoch on."""
        skipped, good_in_cycle, read = 0, start, start  # a lane resumed in a cycle had good samples in it
        for sample in stream.samples(start):
            if sample is None:  # the end of a cycle through the share
                if not good_in_cycle:
                    raise DataError(f"every sample this loader slot reads from {stream.share[0].url} ... is corrupt")
                good_in_cycle = 0
                continue
            read += 1
            try:
                image = decode(sample, decoding, draft_size(self.cfg))
            except ImageDecodeError as err:
                log.warning("skipping corrupt sample: %s", err)
                skipped += 1
                continue
            good_in_cycle += 1
            yield sample["__key__"], image, skipped, read
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
    """(position, key, [-1, 1] tensor of `channels` bands) for this rank's share of the first
    `limit` samples of a test split, in shard order: rank r takes positions r, r + world_size, ...
    The position names a sample across ranks where keys need not (hand-made shards may repeat one)."""
    decoding = domain_decoding(channels, normalize, [shards.deep])
    samples = itertools.chain.from_iterable(read_piece(Piece(url)) for url in shards.urls)
    for position, (_, sample) in enumerate(samples):
        if limit is not None and position >= limit:
            return
        if position % world_size != rank:
            continue
        try:
            image = decode(sample, decoding)
        except ImageDecodeError as err:
            log.warning("skipping corrupt test sample: %s", err)
            continue
        yield position, sample["__key__"], to_unit_tensor(test_transform(image, size))
