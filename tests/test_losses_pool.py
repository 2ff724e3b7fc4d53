"""Adversarial, cycle and identity losses; the history pool and its state."""

import pytest
import torch

from cyclegan.losses import adversarial_loss, cycle_loss, identity_loss
from cyclegan.pool import ImagePool


def test_lsgan_and_vanilla_values():
    scores = torch.tensor([0.0, 1.0, 2.0])
    assert adversarial_loss(scores, True).item() == pytest.approx((1 + 0 + 1) / 3)
    assert adversarial_loss(scores, False).item() == pytest.approx((0 + 1 + 4) / 3)
    expected = torch.nn.functional.softplus(-scores).mean()
    assert torch.allclose(adversarial_loss(scores, True, "vanilla"), expected)


def test_l1_losses():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert cycle_loss(a, b).item() == 0.5 and identity_loss(b, b).item() == 0


def test_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(size=4, seed=1)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned as given
    returned_old = 0
    for i in range(200):
        new = torch.full((1, 1, 1, 1), 100.0 + i)
        out = pool.query(new)
        returned_old += int(out.item() != new.item())
    assert 70 < returned_old < 130  # about half come from the history
    assert len(pool.images) == 4


def test_pool_state_resumes_identically():
    pool = ImagePool(size=3, seed=5)
    for i in range(6):
        pool.query(torch.full((2, 1, 2, 2), float(i)))
    clone = ImagePool(size=3, seed=999)
    clone.load_state_dict(pool.state_dict())
    x = torch.full((4, 1, 2, 2), 42.0)
    assert torch.equal(pool.query(x), clone.query(x))


def test_pool_of_size_zero_passes_through():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(ImagePool(0).query(x), x)
