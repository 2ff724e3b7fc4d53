"""How good the translations are: FID and KID against real target-domain images, and L1,
PSNR and SSIM against ground truth where the test split is paired.

Features come from the standard FID Inception network (torch-fidelity's port of the
TensorFlow graph, through torchmetrics), loaded from a local file; FID and KID are
torchmetrics' own computations, fed with features computed once per image. Each rank
translates its share of the test set; features are gathered by each image's position in the
test split and put in that order (keys name images too, but hand-made or combined shards may
repeat one), so any number of ranks gives the numbers of one, and an image a rank could not read
is simply absent from every layout. Nothing here draws from the training RNG.

Pairing is decided from every rank's names (`cyclegan.pairing`): the split is paired when more
than half of each domain's readable test images have a partner of the same name in the other
(a repeated name pairs occurrence by occurrence, in test order). Partners need not share a rank:
a target held elsewhere is sent to the rank of its source once, and the per-pair values are
gathered by the pair's position and averaged in that order, so L1, PSNR and SSIM, like FID and
KID, are the same on any number of ranks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from cyclegan.data.shards import sample_key
from cyclegan.data.sources import DataSources
from cyclegan.data.stream import iter_test_images
from cyclegan.data.transforms import test_transform
from cyclegan.errors import CheckpointError, UserError
from cyclegan.io.samples import domain_decoding, read_sample, stored_deep, to_unit_tensor
from cyclegan.images import ImageDecodeError, list_images, to_uint8
from cyclegan.models.loading import read_state_dict
from cyclegan.pairing import describe, is_paired, local_pairs, match, whole_split

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_ENV = "CYCLEGAN_INCEPTION_WEIGHTS"
log = logging.getLogger(__name__)
LOWER_IS_BETTER = {"fid": True, "kid": True, "l1": True, "psnr": False, "ssim": False}


def load_inception(path: str | None) -> nn.Module:
    """The FID Inception network from a local weights file; never downloads."""
    path = path or os.environ.get(INCEPTION_ENV)
    if not path or not Path(path).is_file():
        where = f"{path} does not exist. " if path else ""
        raise UserError(
            f"FID and KID need the Inception weights file {INCEPTION_FILE}. {where}Fetch it from {INCEPTION_URL} "
            f"and pass its path with --inception-weights (eval.inception_weights in training) or {INCEPTION_ENV}."
        )
    read_state_dict(path)  # refuses anything but plain tensors before torch-fidelity unpickles it
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(path), antialias=False)


class Precomputed(nn.Module):
    """Hands features computed elsewhere to the torchmetrics FID and KID objects."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@dataclass
class EvalSplit:
    """This rank's share of the test images: keys and [-1, 1] tensors, per domain, and each
    image's position in its domain's test split, which names it across ranks (None: 0, 1, ...,
    the whole split on one rank)."""

    keys_a: list[str]
    images_a: list[torch.Tensor]
    keys_b: list[str]
    images_b: list[torch.Tensor]
    positions_a: list[int] | None = None
    positions_b: list[int] | None = None

    def __post_init__(self) -> None:
        self.positions_a = list(range(len(self.keys_a))) if self.positions_a is None else self.positions_a
        self.positions_b = list(range(len(self.keys_b))) if self.positions_b is None else self.positions_b


def _folder_images(folder: Path, size: int, rank: int, world_size: int, limit: int | None, channels: int,
                   normalize: str):
    """Like `iter_test_images`, from a folder; keys as make_shards would give them. Read as one
    domain (`domain_decoding`): deep when `normalize` or `channels` ask for it, or when any of the
    folder's files is stored deeper than 8 bits."""
    seen: set[str] = set()
    listed = list_images(folder)
    files = listed[:limit]
    decoding = domain_decoding(channels, normalize, (stored_deep(path) for path in listed))
    for position, path in enumerate(files):
        key = sample_key(path.relative_to(folder), seen)
        if position % world_size == rank:
            try:
                image = read_sample(path, decoding).pixels
            except ImageDecodeError:
                continue
            yield position, key, to_unit_tensor(test_transform(image, size))


def load_test_split(source: DataSources | Path, size: int, rank: int = 0, world_size: int = 1,
                    limit: int | None = None, channels: tuple[int, int] = (3, 3),
                    normalizations: tuple[str, str] = ("dtype", "dtype")) -> EvalSplit:
    """From shards (the manifest's test split) or a folder with testA/ and testB/; the first
    `limit` images of each domain, or all, with `channels` and `normalizations` (A's, B's)."""
    if isinstance(source, Path):
        pairs = [list(_folder_images(source / f"test{d}", size, rank, world_size, limit, c, n))
                 for d, c, n in zip("AB", channels, normalizations)]
    else:
        if not (source.test_a and source.test_b):
            raise UserError("the data has no test split (test/A and test/B): nothing to evaluate on")
        pairs = [list(iter_test_images(s, size, rank, world_size, limit, c, n))
                 for s, c, n in zip((source.test_a, source.test_b), channels, normalizations)]
    (at_a, keys_a, images_a), (at_b, keys_b, images_b) = ([list(x) for x in zip(*p)] if p else ([], [], [])
                                                          for p in pairs)
    return EvalSplit(keys_a, images_a, keys_b, images_b, at_a, at_b)


class Evaluator:
    """Translates the test split both ways and scores it; real-image features are cached."""

    def __init__(self, accelerator: Accelerator, split: EvalSplit, features: nn.Module | None,
                 batch_size: int = 8, kid_subsets: int = 100, kid_subset_size: int = 100) -> None:
        self.acc, self.split, self.batch_size = accelerator, split, batch_size
        self.features = features.to(accelerator.device).eval() if features is not None else None
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.real_features: dict[str, torch.Tensor] = {}
        everywhere = self._all_ranks((split.positions_a, split.keys_a, split.positions_b, split.keys_b))
        a, b = (whole_split([(part[i], part[i + 1]) for part in everywhere]) for i in (0, 2))
        pairs = match(a, b)
        self.paired = is_paired(len(a), len(b), len(pairs))
        self.pairing = describe(len(a), len(b), len(pairs))  # for messages when not paired
        # every rank decides `paired` alike, so all or none take part in the exchange of partners
        self.partners = (local_pairs(pairs, self.acc.process_index, split.images_a, split.images_b, self._all_ranks)
                         if self.paired else {})

    def _all_ranks(self, value: object) -> list:
        """Every rank's `value`, in rank order."""
        return gather_object([value]) if self.acc.num_processes > 1 else [value]

    @torch.no_grad()
    def _translate(self, net: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 translations, as a user would save them; sides that are no multiple of 4 are
        reflection-padded for the generator's two downsamplings and cropped back, as the
        translator does."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack(images[start:start + self.batch_size]).to(self.acc.device)
            height, width = batch.shape[-2:]
            if height % 4 or width % 4:
                batch = F.pad(batch, (0, -width % 4, 0, -height % 4), mode="reflect")
            with self.acc.autocast():
                out.append(to_uint8(net(batch)[..., :height, :width]))
        return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8, device=self.acc.device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Inception features of uint8 images; greyscale ones are seen as RGB with equal channels, and
        other band counts by their first three bands (or the first alone, for two)."""
        if images.shape[1] not in (1, 3):
            images = images[:, :3] if images.shape[1] > 3 else images[:, :1]
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        chunks = [self.features(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return torch.cat(chunks).double() if chunks else torch.zeros(0, 1, dtype=torch.float64, device=self.acc.device)

    def __call__(self, g_ab: nn.Module, g_ba: nn.Module | None = None) -> dict[str, float]:
        """Metrics of each direction there is a generator for (CUT: A -> B alone)."""
        results: dict[str, float] = {}
        s = self.split
        for name, net, source, target, positions in (
                ("AtoB", g_ab, s.images_a, s.images_b, (s.positions_a, s.positions_b)),
                ("BtoA", g_ba, s.images_b, s.images_a, (s.positions_b, s.positions_a))):
            if net is None:
                continue
            was_training = net.training
            net.eval()
            fake = self._translate(net, source)
            net.train(was_training)
            if self.features is not None:
                results.update(self._distribution_metrics(name, fake, target, *positions))
            if self.paired:
                results.update(self._paired_metrics(name, fake))
        return results

    def _gathered(self, positions: list[int], features: torch.Tensor) -> torch.Tensor:
        """Every rank's features, one row per image, in test-split order: the same rows in the same
        order whatever the number of ranks and whichever images a rank skipped."""
        rows = {at: row for part_positions, part in self._all_ranks((positions, features.cpu()))
                for at, row in zip(part_positions, part)}
        if not rows:
            return torch.zeros(0, features.shape[1], dtype=features.dtype)
        return torch.stack([rows[at] for at in sorted(rows)])

    def _distribution_metrics(self, name: str, fake: torch.Tensor, target: list[torch.Tensor],
                              fake_positions: list[int], target_positions: list[int]) -> dict[str, float]:
        if name not in self.real_features:
            stacked = torch.stack(target) if target else torch.zeros(0, 3, 1, 1)
            real = self._features(to_uint8(stacked.to(self.acc.device)))
            self.real_features[name] = self._gathered(target_positions, real)
        real, fake_f = self.real_features[name], self._gathered(fake_positions, self._features(fake))
        if len(real) < 2 or len(fake_f) < 2:
            raise UserError(f"{name}: FID and KID need at least 2 readable test images in each domain, "
                            f"not {len(fake_f)} and {len(real)}")
        # Every rank now holds all features and computes the same numbers: no further sync.
        dim = real.shape[1]
        fid = FrechetInceptionDistance(feature=Precomputed(dim), sync_on_compute=False)
        fid.update(real, real=True)
        fid.update(fake_f, real=False)
        size = min(self.kid_subset_size, len(real), len(fake_f))
        kid = KernelInceptionDistance(feature=Precomputed(dim), subsets=self.kid_subsets, subset_size=size,
                                      sync_on_compute=False)
        kid.update(real, real=True)
        kid.update(fake_f, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # KID's subsets: the same every time, and the training RNG untouched
            kid_mean, kid_std = kid.compute()
        return {f"{name}/fid": fid.compute().item(), f"{name}/kid": kid_mean.item(), f"{name}/kid_std": kid_std.item()}

    def _paired_metrics(self, name: str, fake: torch.Tensor) -> dict[str, float]:
        """Mean L1, PSNR and SSIM over the pairs: per-pair values, gathered by the pair's source
        position and averaged in that order, so any number of ranks gives the numbers of one."""
        positions, indices, truth = self.partners[name]
        values = torch.zeros(0, 3, dtype=torch.float64)  # a rank without pairs adds nothing
        if positions:
            preds = fake[indices].float() / 255.0
            truth = truth.to(self.acc.device).float() / 255.0
            l1 = (preds - truth).abs().mean(dim=(1, 2, 3))
            psnr = peak_signal_noise_ratio(preds, truth, data_range=1.0, reduction="none", dim=(1, 2, 3))
            ssim = structural_similarity_index_measure(preds, truth, data_range=1.0, reduction="none")
            values = torch.stack([l1, psnr, ssim], dim=1).double()
        l1, psnr, ssim = self._gathered(positions, values).mean(dim=0).tolist()
        return {f"{name}/l1": l1, f"{name}/psnr": psnr, f"{name}/ssim": ssim}


def headline(results: dict[str, float], metric: str) -> float:
    """The number `eval.metric` names, averaged over both directions."""
    values = [v for k, v in results.items() if k.endswith(f"/{metric}")]
    if not values:
        raise UserError(f"eval.metric={metric} was not computed (FID and KID need Inception weights; "
                        "l1, psnr and ssim need a paired test split)")
    return sum(values) / len(values)


def format_table(results: dict[str, float]) -> str:
    metrics = sorted({k.split("/", 1)[1] for k in results})
    lines = ["direction  " + "  ".join(f"{m:>9}" for m in metrics)]
    for direction in ("AtoB", "BtoA"):
        if not any(key.startswith(f"{direction}/") for key in results):
            continue
        cells = [f"{results[f'{direction}/{m}']:9.4f}" if f"{direction}/{m}" in results else f"{'-':>9}" for m in metrics]
        lines.append(f"{direction:<9}  " + "  ".join(cells))
    return "\n".join(lines)


def load_generator_pair(path: Path) -> tuple[nn.Module, nn.Module | None]:
    """(g_ab, g_ba) from a run folder, an export or checkpoint folder, or a folder of official
    `latest_net_G_A.pth` and `latest_net_G_B.pth`; (g_ab, None) from a CUT model (its folder, or its
    one file), which translates A -> B alone, and from a folder whose one generator is the CycleGAN
    pretrained downloads' `latest_net_G.pth`, which holds one direction: it is not scored as both."""
    from cyclegan.models import load_generator
    from cyclegan.models.loading import HF_WEIGHTS, one_way, resolve_generator_path

    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if one_way(path):
        return load_generator(path, direction="AtoB"), None
    if not path.is_dir() or (path / HF_WEIGHTS).is_file():
        raise UserError(f"{path} holds one generator; evaluation needs both directions (a CUT model's one is scored "
                        "A -> B): give a run folder, an export or checkpoint folder, or a folder with the official "
                        "latest_net_G_A.pth and latest_net_G_B.pth")
    try:
        a_to_b = resolve_generator_path(path, "AtoB")
        if one_way(a_to_b):  # the official CUT generator without its head
            return load_generator(a_to_b), None
        b_to_a = resolve_generator_path(path, "BtoA")
    except CheckpointError as err:
        raise UserError(f"{path} holds no pair of generators: give a run folder, an export or checkpoint folder, "
                        f"or a folder with the official latest_net_G_A.pth and latest_net_G_B.pth ({err})") from None
    if b_to_a == a_to_b:
        log.warning("%s holds one generator, %s: it is scored A -> B alone", path, a_to_b.name)
        return load_generator(a_to_b), None
    g_ab, g_ba = load_generator(a_to_b), load_generator(b_to_a)
    a, b = g_ab.spec, g_ba.spec
    if (a.in_channels, a.out_channels) != (b.out_channels, b.in_channels):
        raise UserError(f"{path}: its generators do not make a pair: AtoB maps {a.in_channels} -> {a.out_channels} "
                        f"channels, BtoA {b.in_channels} -> {b.out_channels}")
    return g_ab, g_ba
