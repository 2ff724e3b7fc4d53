"""Which test images of A and B show the same scene, for the paired metrics (L1, PSNR, SSIM).

Decided over the whole test split, from every rank's names, so that the answer and the pairs do
not depend on how many ranks share the split:

- An image pairs with the image of the same name in the other domain. A name that occurs more
  than once in a domain (hand-made or combined shards) pairs by occurrence, in test order: the
  first `x` of A with the first `x` of B, the second with the second.
- The split is paired when more than half of each domain's readable test images have a partner.
  One image missing or unreadable on either side leaves the rest paired; two unrelated sets that
  happen to share a name or two (`0001.png`) are not.
- An image that cannot be read counts as absent, so a corrupt image and a missing one give the
  same numbers; its partner is left out of the paired metrics.

The two images of a pair need not sit on the same rank (positions shift once one domain lacks
an image): `local_pairs` sends each target to the rank of its source.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, NamedTuple

import torch

from cyclegan.images import to_uint8


# Per direction: the test positions of this rank's sources (which name the pairs), their indices
# in this rank's list, and their uint8 targets.
Partners = tuple[list[int], list[int], torch.Tensor]


class Entry(NamedTuple):
    """One readable test image: its position in its domain's test split, its name, and where it
    lives (the rank, and its index in that rank's list)."""

    position: int
    key: str
    rank: int
    index: int


def whole_split(per_rank: list[tuple[list[int], list[str]]]) -> list[Entry]:
    """Every rank's (positions, keys) of one domain -> the domain's readable images in test order."""
    return sorted(Entry(at, key, rank, index) for rank, (positions, keys) in enumerate(per_rank)
                  for index, (at, key) in enumerate(zip(positions, keys)))


def _by_occurrence(entries: list[Entry]) -> dict[tuple[str, int], Entry]:
    seen: Counter[str] = Counter()
    named = {}
    for entry in entries:
        named[(entry.key, seen[entry.key])] = entry
        seen[entry.key] += 1
    return named


def match(a: list[Entry], b: list[Entry]) -> list[tuple[Entry, Entry]]:
    """(A image, B image) for every name, occurrence by occurrence, found in both; in A's test order."""
    in_b = _by_occurrence(b)
    return [(entry, in_b[name]) for name, entry in _by_occurrence(a).items() if name in in_b]


def is_paired(images_a: int, images_b: int, pairs: int) -> bool:
    """More than half of each domain's readable test images have a partner."""
    return 2 * pairs > images_a and 2 * pairs > images_b


def describe(images_a: int, images_b: int, pairs: int) -> str:
    """How far the names pair, for messages."""
    return (f"{pairs} of the {images_a} readable test images of A and {pairs} of the {images_b} of B have a partner "
            "of the same name; paired metrics need more than half of each")


def local_pairs(pairs: list[tuple[Entry, Entry]], rank: int, images_a: list[torch.Tensor],
                images_b: list[torch.Tensor], all_ranks: Callable[[object], list]) -> dict[str, Partners]:
    """Per direction ("AtoB", "BtoA"), the pairs whose source image is on `rank`, with their
    targets. A target held by another rank is sent here once through `all_ranks` (a collective:
    every rank must call this); on one rank, and wherever both images of a pair share a rank,
    nothing moves."""
    directions = {"AtoB": (pairs, images_b), "BtoA": ([(b, a) for a, b in pairs], images_a)}
    sent = {name: {target.position: to_uint8(images[target.index]) for source, target in matched
                   if target.rank == rank != source.rank} for name, (matched, images) in directions.items()}
    received = {name: {at: image for part in all_ranks(sent) for at, image in part[name].items()}
                for name in directions}
    partners = {}
    for name, (matched, images) in directions.items():
        mine = [(source, target) for source, target in matched if source.rank == rank]
        targets = [to_uint8(images[t.index]) if t.rank == rank else received[name][t.position] for _, t in mine]
        partners[name] = ([source.position for source, _ in mine], [source.index for source, _ in mine],
                          torch.stack(targets) if targets else torch.zeros(0, 3, 1, 1, dtype=torch.uint8))
    return partners
