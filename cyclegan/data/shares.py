"""One loader slot's share of a domain's shards, and the shuffled stream of its raw samples.

A share is a list of pieces of shards. A lane reads its share in cycles: each cycle visits the
pieces in an order of its own and mixes their samples through a shuffle buffer. Which samples a
cycle keeps is decided before any is read: every one, except in the epoch's last, partial pass,
which keeps a subset drawn uniformly at random (reading the share in order through a buffer
smaller than it would favour the first samples of each shard). So every image of a share is drawn
equally often in expectation, wherever it lies in its shard.

Everything a lane yields is a function of the share's sample counts and the seed, not of the
bytes: a resumed lane plans the stream up to its saved position without reading anything, then
reads only the pieces that hold the samples still in its buffer and those after, passing over
the others' bytes undecoded. Without counts (remote shards given without a manifest) the first
cycle is read through, without decoding, up to the position.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from cyclegan.errors import DataError

log = logging.getLogger(__name__)
Token = tuple[int, int]  # (position of the piece in the share, ordinal of the sample in the piece)


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

    @property
    def size(self) -> int | None:
        """Its sample count, when the shard's is known."""
        return None if self.stop is None else len(range(self.first, self.stop, self.stride))


def layout(urls: tuple[str, ...], seed: int) -> list[int]:
    """The epoch's shard order, drawn from a seed every rank and worker shares."""
    order = list(range(len(urls)))
    random.Random(seed).shuffle(order)
    return order


def counted_share(urls: tuple[str, ...], counts: tuple[int, ...], begin: int, end: int, seed: int) -> list[Piece]:
    """Samples [begin, end) of the shards laid end to end in the epoch's order."""
    share, offset = [], 0
    for index in layout(urls, seed):
        first, stop = max(begin, offset), min(end, offset + counts[index])
        if first < stop:
            share.append(Piece(urls[index], first - offset, stop - offset))
        offset += counts[index]
    return share


def interleaved_share(urls: tuple[str, ...], slot: int, n_slots: int, seed: int) -> list[Piece]:
    """Without sample counts: every n-th sample of every shard, the slot that keeps a shard's
    first sample rotating along the epoch's order so that no slot is favoured."""
    return [Piece(urls[index], stride=n_slots, offset=(slot + k) % n_slots) for k, index in enumerate(layout(urls, seed))]


META_FILE = re.compile(r"__[^/]*__($|/)")  # WebDataset's metadata files, which hold no sample


def group_key(name: str) -> str | None:
    """The sample a tar member belongs to, as WebDataset groups files: consecutive files whose
    names share everything before the first dot of their base name are one sample. None for files
    that belong to none (metadata, no extension), which WebDataset drops too. Counting a shard
    (`cyclegan.data.sources.count_samples`) and reading it (`read_piece`) both group by it."""
    return None if META_FILE.match(name) else base_plus_ext(name)[0]


def read_piece(piece: Piece, wanted: Callable[[int], bool] = lambda ordinal: True) -> Iterator[tuple[int, dict]]:
    """(ordinal within the piece, sample) for the samples of `piece` that `wanted` takes (all by
    default), grouped by `group_key`; the bytes of the others are passed over, never kept or
    decoded. A sample with two files of one suffix is refused (it could only be read one way)."""
    state = {"key": None, "index": -1, "ordinal": -1, "take": False}

    def select(name: str) -> bool:
        key = group_key(name)
        if key is None:
            return False
        if key != state["key"]:
            state["key"], state["index"] = key, state["index"] + 1
            beyond = piece.stop is not None and state["index"] >= piece.stop
            kept = not beyond and piece.keeps(state["index"])
            state["ordinal"] += kept
            state["take"] = beyond or (kept and wanted(state["ordinal"]))  # one file past the end says stop
        return state["take"]

    sample: dict = {}
    stream = wds.gopen(piece.url)
    try:  # the iterator calls `select` for a file, then yields it: `state` describes the file yielded
        for file in tar_file_iterator(stream, select_files=select, handler=wds.warn_and_continue):
            if sample and sample["__key__"] != state["key"]:
                yield sample.pop("__ordinal__"), sample
                sample = {}
            if piece.stop is not None and state["index"] >= piece.stop:
                return
            sample = sample or {"__key__": state["key"], "__url__": piece.url, "__ordinal__": state["ordinal"]}
            suffix = base_plus_ext(file["fname"])[1].lower()
            if suffix in sample:
                raise DataError(f"shard {piece.url}: sample {state['key']} holds two files ending in .{suffix} "
                                f"({file['fname']} is the second): give each file of a sample its own suffix")
            sample[suffix] = file["data"]
        if sample:
            yield sample.pop("__ordinal__"), sample
    except (tarfile.TarError, OSError, EOFError) as err:
        log.warning("stopped reading shard %s: %s", piece.url, err)
    finally:
        stream.close()


class Mixer:
    """A shuffle buffer: filled to `size`, then each new item takes the place of one drawn at
    random, which goes out; `drain` empties it in a random order."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.pending = size, rng, []

    def push(self, item: object) -> object | None:
        if len(self.pending) < self.size:
            self.pending.append(item)
            return None
        pick = self.rng.randrange(self.size)
        out, self.pending[pick] = self.pending[pick], item
        return out

    def drain(self) -> list:
        self.rng.shuffle(self.pending)
        out, self.pending = self.pending, []
        return out


class ShareStream:
    """The raw samples (bytes, not yet decoded) of one slot's share, endlessly: a lane draws
    `draws` samples of it per epoch. Each cycle yields the samples it keeps (see the module's
    docstring) once, then None."""

    def __init__(self, share: list[Piece], buffer: int, seed: int, draws: int) -> None:
        self.share, self.buffer, self.seed, self.draws = share, max(1, buffer), seed, draws
        sizes = [piece.size for piece in share]
        self.sizes: list[int] | None = None if None in sizes else sizes

    def order(self, cycle: int) -> list[int]:
        order = list(range(len(self.share)))
        random.Random(mix_seed(self.seed, "cycle", cycle)).shuffle(order)
        return order

    def kept(self, cycle: int) -> set[Token] | None:
        """The samples a cycle keeps: all (None), but in the epoch's last, partial pass (when the
        lane draws `draws mod size` samples more) a subset drawn uniformly at random."""
        if self.sizes is None:
            return None
        full, rest = divmod(self.draws, sum(self.sizes))
        if cycle != full or not rest:
            return None
        everything = [(p, j) for p, size in enumerate(self.sizes) for j in range(size)]
        return set(random.Random(mix_seed(self.seed, "subset")).sample(everything, rest))

    def planned(self, cycle: int, kept: set[Token] | None) -> list[Token]:
        """The samples a cycle reads, in the order it reads them (counts known)."""
        return [(p, j) for p in self.order(cycle) for j in range(self.sizes[p]) if kept is None or (p, j) in kept]

    def read(self, cycle: int, wanted: Callable[[Token], bool], pieces: set[int] | None = None
             ) -> Iterator[tuple[Token, dict]]:
        for p in self.order(cycle):
            if pieces is None or p in pieces:
                for j, sample in read_piece(self.share[p], lambda j, p=p: wanted((p, j))):
                    yield (p, j), sample

    def samples(self, start: int = 0) -> Iterator[dict | None]:
        """The stream from raw sample `start` on (non-zero when resuming)."""
        yielded = 0
        for cycle in itertools.count():
            kept = self.kept(cycle)
            if self.sizes is not None and start >= yielded + (length := len(kept or ()) or sum(self.sizes)):
                yielded += length  # a cycle wholly before the position: not read at all
                continue
            mixer = Mixer(self.buffer, random.Random(mix_seed(self.seed, "buffer", cycle)))
            reads = self.read(cycle, lambda token: kept is None or token in kept)
            if self.sizes is not None and start > yielded:
                reads, passed = self._seek(mixer, cycle, kept, start - yielded)
                yielded += passed
            counts: dict[int, int] = {}
            for token, sample in reads:
                counts[token[0]] = token[1] + 1
                out = mixer.push((token, sample))
                if out is not None:
                    yielded += 1
                    if yielded > start:
                        yield out[1]
            if not mixer.pending:
                raise DataError(
                    f"no samples could be read from {len(self.share)} shard(s) ({self.share[0].url if self.share else 'none'}"
                    " ...): the shards are empty or unreadable, or hold fewer samples than their counts say")
            for _, sample in mixer.drain():
                yielded += 1
                if yielded > start:
                    yield sample
            if self.sizes is None:  # counted on the first pass: later cycles can plan
                self.sizes = [counts.get(p, 0) for p in range(len(self.share))]
            if yielded > start:
                yield None

    def _seek(self, mixer: Mixer, cycle: int, kept: set[Token] | None, skip: int
              ) -> tuple[Iterator[tuple[Token, dict]], int]:
        """Fill `mixer` as it stands after `skip` samples of the cycle went out, planned without
        reading; then read the samples still in it and the cycle's rest. Returns the rest's reads
        and how many samples went out in the plan (fewer than `skip` when it ends in the drain)."""
        plan, cursor, passed = self.planned(cycle, kept), 0, 0
        while passed < skip and cursor < len(plan):
            passed += mixer.push(plan[cursor]) is not None
            cursor += 1
        slots = {token: i for i, token in enumerate(mixer.pending)}
        later = set(plan[cursor:])
        reads = self.read(cycle, lambda token: token in slots or token in later,
                          {p for p, _ in itertools.chain(slots, later)})
        for token, sample in reads:
            if token in later:
                reads = itertools.chain([(token, sample)], reads)
                break
            mixer.pending[slots[token]] = (token, sample)
        mixer.pending = [item for item in mixer.pending if isinstance(item[1], dict)]  # a shard shorter than counted
        return reads, passed


def mix_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")
