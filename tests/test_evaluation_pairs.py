"""Paired metrics (L1, PSNR, SSIM): which images pair is decided over the whole test split, and
the numbers are the same on any number of ranks, even where partners sit on different ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from cyclegan.evaluation import EvalSplit, Evaluator, load_test_split
from cyclegan.images import to_uint8
from tests.conftest import ROOT, launch, script


def named_scenes(demo_folders: Path, root: Path, names_a: str, names_b: str) -> Path:
    """testA/ and testB/ of demo test scenes under the given one-letter names: scene i of the demo
    is named by the i-th letter, so that equal letters are true pairs (`testB/x` recolours `testA/x`)."""
    scenes = [p.name for p in sorted((demo_folders / "testA").glob("*.png"))]
    for domain, names in (("A", names_a), ("B", names_b)):
        (root / f"test{domain}").mkdir(parents=True)
        for name in names:
            scene = scenes["abcdefghijklmnopqrstuvwxyz".index(name)]
            shutil.copy(demo_folders / f"test{domain}" / scene, root / f"test{domain}" / f"{name}.png")
    return root


def test_one_missing_partner_gives_the_same_numbers_on_one_and_two_ranks(generators, demo_folders, tmp_path):
    data = named_scenes(demo_folders, tmp_path / "data", "abcd", "bcd")
    # On two ranks A's b, c, d and B's b, c, d sit on different ranks (B's positions are shifted by
    # the missing a): every pair has to meet across ranks.
    shares = [load_test_split(data, 16, rank, 2) for rank in (0, 1)]
    assert [(s.keys_a, s.keys_b) for s in shares] == [(["a", "c"], ["b", "d"]), (["b", "d"], ["c"])]

    def scores(ranks: int) -> dict:
        out = tmp_path / f"{ranks}.json"
        launch(ranks, str(ROOT / "scripts/evaluate.py"), "--checkpoint", generators, "--data", data, "--paired-only",
               "--size", "32", "--batch-size", "1", "--json", out)
        return json.loads(out.read_text())

    one, two = scores(1), scores(2)
    assert set(one) == set(two) == {f"{d}/{m}" for d in ("AtoB", "BtoA") for m in ("l1", "psnr", "ssim")}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-9), key


def test_names_that_share_only_one_of_three_do_not_pair(generators, demo_folders, tmp_path):
    data = named_scenes(demo_folders, tmp_path / "data", "abc", "bpq")
    result = script("evaluate.py", "--checkpoint", generators, "--data", data, "--paired-only", "--size", "32",
                    "--json", tmp_path / "scores.json", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not pair (1 of the 3 readable test images of A and 1 of the 3 of B" in lines[0]
    assert not (tmp_path / "scores.json").exists()


def test_a_repeated_name_pairs_occurrence_by_occurrence():
    # A: x, x, y; B: x, y, x. A's first x pairs with B's first x, its second with B's second x.
    g = torch.Generator().manual_seed(0)
    a, b = ([torch.rand(3, 8, 8, generator=g) * 2 - 1 for _ in range(3)] for _ in range(2))
    split = EvalSplit(["x", "x", "y"], a, ["x", "y", "x"], b)
    evaluator = Evaluator(Accelerator(cpu=True), split, None)
    results = evaluator(torch.nn.Identity(), torch.nn.Identity())
    pairs = [(0, 0), (1, 2), (2, 1)]
    l1 = sum((to_uint8(a[i]).double() - to_uint8(b[j]).double()).abs().mean() / 255 for i, j in pairs) / 3
    assert evaluator.paired
    assert results["AtoB/l1"] == pytest.approx(l1.item(), rel=1e-6)
    assert results["BtoA/l1"] == pytest.approx(l1.item(), rel=1e-6)
