"""The learning-rate schedule against its closed form, in the scheduler and in a real run's logs.

Step s (counted from 1) of a schedule of C constant and D decay steps trains at
lr * min(1, (C + D + 1 - s) / D): full rate through step C + 1, then falling by lr / D a step,
to lr / D at the last step and zero after it. (The official code decays per epoch in a
staircase, 1 - k / (D + 1), never reaching zero; ours decays per step, as the paper words it.)
"""

import json

import pytest
import torch

from cyclegan.errors import UserError
from cyclegan.schedule import continue_schedule, make_scheduler
from tests.conftest import script, tiny


def closed_form(lr: float, constant: int, decay: int, step: int) -> float:
    return lr * min(1.0, (constant + decay + 1 - step) / decay)


def test_scheduler_follows_the_closed_form_across_the_boundary():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = make_scheduler(optimizer, steps_per_epoch=3, epochs=2, decay_epochs=4)  # C = 6, D = 12
    used = []
    for _ in range(18):
        used.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([closed_form(2e-4, 6, 12, s) for s in range(1, 19)], rel=1e-12)
    assert used[5] == used[6] == 2e-4 and used[7] == pytest.approx(2e-4 * 11 / 12) and used[-1] == pytest.approx(2e-4 / 12)
    assert scheduler.get_last_lr()[0] == 0.0


def test_a_finished_schedule_is_not_stretched_from_zero():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    scheduler = make_scheduler(optimizer, steps_per_epoch=3, epochs=2, decay_epochs=4)
    for _ in range(18):
        optimizer.step()
        scheduler.step()
    assert not continue_schedule(scheduler, 3, 2, 4, 18)  # the same schedule: nothing to continue
    with pytest.raises(UserError, match="already reached zero at step 18.*init_from"):
        continue_schedule(scheduler, 3, 2, 8, 18)


def test_a_run_logs_the_rate_each_step_was_taken_with(noise_shards, tmp_path):
    # 16 images per domain at batch 2: 8 steps per epoch; 1 constant epoch and 2 of decay
    out = tmp_path / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(noise_shards, out, "train.epochs=1", "train.decay_epochs=2", "tracking.mode=disabled"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 25))
    expected = [closed_form(5e-4, 8, 16, s) for s in range(1, 25)]  # configs/demo.yaml's lr
    assert [r["lr/g"] for r in rows] == pytest.approx(expected, rel=1e-12)
    assert [r["lr/d"] for r in rows] == pytest.approx(expected, rel=1e-12)
