"""FID, KID and paired metrics: against independent numpy/scipy computations, across ranks,
and inside training."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from accelerate import Accelerator
from torch import nn

from cyclegan.errors import UserError
from cyclegan.evaluation import EvalSplit, Evaluator, load_inception
from cyclegan.images import to_uint8
from cyclegan.models import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import export_generator
from tests.conftest import ROOT, launch, script, tiny


class SmallFeatures(nn.Module):
    """A fixed random convolution and pooling: 16 features per image, in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 16, 5, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images.float() / 255.0)).mean(dim=(2, 3))


class Shift(nn.Module):
    """A 'generator' whose output is known: the input moved by a constant."""

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.delta = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta).clamp(-1, 1)


def random_split(n=24, size=32, paired=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(n)]
    b = [torch.rand(3, size, size, generator=g) * 1.2 - 0.8 for _ in range(n)]
    keys = [f"k{i:03d}" for i in range(n)]
    return EvalSplit(keys, a, keys if paired else [f"x{i}" for i in range(n)], b)


def numpy_fid(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def numpy_kid(x, y):
    """Unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3, over all samples."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_fid_and_kid_agree_with_numpy_scipy():
    split = random_split()
    features = SmallFeatures()
    evaluator = Evaluator(Accelerator(cpu=True), split, features, batch_size=5, kid_subsets=3, kid_subset_size=100)
    results = evaluator(Shift(0.3), Shift(-0.2))
    with torch.no_grad():
        for name, delta, source, target in (("AtoB", 0.3, split.images_a, split.images_b),
                                            ("BtoA", -0.2, split.images_b, split.images_a)):
            fake = features(to_uint8((torch.stack(source) + delta).clamp(-1, 1))).double().numpy()
            real = features(to_uint8(torch.stack(target))).double().numpy()
            assert results[f"{name}/fid"] == pytest.approx(numpy_fid(real, fake), rel=1e-4, abs=1e-6)
            assert results[f"{name}/kid"] == pytest.approx(numpy_kid(real, fake), rel=1e-4, abs=1e-7)


def test_paired_metrics_against_hand_computed_values():
    split = random_split(n=6)
    results = Evaluator(Accelerator(cpu=True), split, None)(Shift(0.0), Shift(0.0))
    for name, source, target in (("AtoB", split.images_a, split.images_b), ("BtoA", split.images_b, split.images_a)):
        fake = to_uint8(torch.stack(source)).double().numpy() / 255
        real = to_uint8(torch.stack(target)).double().numpy() / 255
        l1 = np.abs(fake - real).mean(axis=(1, 2, 3)).mean()
        psnr = (10 * np.log10(1 / ((fake - real) ** 2).mean(axis=(1, 2, 3)))).mean()
        assert results[f"{name}/l1"] == pytest.approx(l1, rel=1e-5)
        assert results[f"{name}/psnr"] == pytest.approx(psnr, rel=1e-5)
        assert 0 < results[f"{name}/ssim"] < 1 and "AtoB/fid" not in results
    same = EvalSplit(["a", "b"], [torch.zeros(3, 16, 16)] * 2, ["a", "b"], [torch.zeros(3, 16, 16)] * 2)
    identical = Evaluator(Accelerator(cpu=True), same, None)(Shift(0.0), Shift(0.0))
    assert identical["AtoB/ssim"] == pytest.approx(1.0, abs=1e-3) and identical["AtoB/l1"] == 0
    unpaired = Evaluator(Accelerator(cpu=True), random_split(n=4, paired=False), None)(Shift(0.0), Shift(0.0))
    assert unpaired == {}


def test_missing_inception_weights_name_the_file_and_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CYCLEGAN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="weights-inception-2015-12-05-6726825d.pth.*https://github.com/toshas"):
        load_inception(None)
    with pytest.raises(UserError, match="does not exist"):
        load_inception(str(tmp_path / "nope.pth"))


@pytest.fixture
def export_folder(tmp_path):
    torch.manual_seed(0)
    for name in ("g_ab", "g_ba"):
        export_generator(ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1)), tmp_path / f"{name}.safetensors")
    return tmp_path


@pytest.mark.slow
@pytest.mark.heavy  # about 50 s; test_evaluation_pairs checks 1 against 2 ranks on an uneven split within make test
def test_two_ranks_give_the_numbers_of_one(export_folder, demo_shards, inception_weights, tmp_path):
    # One image per forward pass, so that each image meets the same kernels however the ranks
    # share the set: what may differ is the order of the float64 sums that gather the statistics.
    # Control: one image fewer, as a rank that lost an image would give.
    def scores(nproc, images):
        launch(nproc, str(ROOT / "scripts/evaluate.py"), "--checkpoint", export_folder, "--data", demo_shards,
               "--inception-weights", inception_weights, "--size", "64", "--batch-size", "1",
               "--max-images", str(images), "--json", tmp_path / f"{nproc}-{images}.json")
        return json.loads((tmp_path / f"{nproc}-{images}.json").read_text())

    one, two, fewer = scores(1, 10), scores(2, 10), scores(1, 9)
    assert set(one) == {f"{d}/{m}" for d in ("AtoB", "BtoA") for m in ("fid", "kid", "kid_std", "l1", "psnr", "ssim")}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key
    assert all(fewer[key] != pytest.approx(one[key], rel=1e-6, abs=1e-9) for key in ("AtoB/fid", "AtoB/l1"))


def test_cli_without_weights_is_a_clear_error(export_folder, demo_shards, monkeypatch):
    monkeypatch.delenv("CYCLEGAN_INCEPTION_WEIGHTS", raising=False)
    result = script("evaluate.py", "--checkpoint", export_folder, "--data", demo_shards, check=False)
    assert result.returncode == 2 and "Fetch it from https://" in result.stderr and "Traceback" not in result.stderr
    paired = script("evaluate.py", "--checkpoint", export_folder, "--data", demo_shards, "--paired-only", "--size", "32")
    assert "AtoB/psnr" in paired.stdout and "fid" not in paired.stdout


@pytest.mark.slow
def test_evaluation_during_training_keeps_the_best_and_leaves_training_unchanged(demo_shards, inception_weights,
                                                                                tmp_path):
    common = ["train.max_steps=4", "eval.batch_size=6", "eval.max_images=6"]
    script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, tmp_path / "plain", *common))
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, tmp_path / "eval", *common, "eval.every=2", f"eval.inception_weights={inception_weights}"))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "eval/AtoB/fid" in row]
    assert [row["step"] for row in evaluated] == [2, 4] and "eval/BtoA/psnr" in evaluated[0]
    best = json.loads((tmp_path / "eval" / "best" / "best.json").read_text())
    scores = {row["step"]: (row["eval/AtoB/fid"] + row["eval/BtoA/fid"]) / 2 for row in evaluated}
    assert best["step"] == min(scores, key=scores.get) and best["fid"] == pytest.approx(min(scores.values()))
    assert (tmp_path / "eval" / "best" / "g_ab.safetensors").is_file()
    def losses(rows):
        return [{k: v for k, v in row.items() if k.startswith("loss/")} for row in rows if "loss/d_a" in row]

    plain = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert losses(plain) == losses(rows) and len(losses(rows)) == 4
