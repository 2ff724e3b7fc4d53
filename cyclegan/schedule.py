"""The paper's learning-rate schedule, counted in optimizer steps: constant, then linear to zero.

A run resumed with a longer schedule (more `train.epochs` or `train.decay_epochs`) goes on from
the rate it had reached, with no jump: while still constant it simply follows the new schedule;
once decaying, it falls linearly from where it was to zero at the new end. A schedule that already reached zero cannot
go on from there: that is refused, and `init_from` starts the weights on a fresh schedule.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cyclegan.errors import UserError


class ConstantThenLinear:
    """LR factor 1 for `constant` steps, then falling linearly to 0 over `decay` steps; or, once
    continued at step `start` with factor `value` < 1, linearly from there to 0 at the end.

    A class rather than a lambda so that LambdaLR saves its fields in its state_dict.
    """

    def __init__(self, constant: int, decay: int) -> None:
        self.constant, self.decay = constant, decay
        self.start, self.value = 0, 1.0

    def __call__(self, step: int) -> float:
        end = self.constant + self.decay
        if self.value < 1.0 or self.start > self.constant:
            return self.value * max(0.0, (end - step) / (end - self.start)) if end > self.start else 0.0
        if step < self.constant:
            return 1.0
        if self.decay == 0:
            return 0.0
        return max(0.0, 1.0 - (step - self.constant) / self.decay)


def make_scheduler(optimizer: Optimizer, steps_per_epoch: int, epochs: int, decay_epochs: int) -> LambdaLR:
    return LambdaLR(optimizer, ConstantThenLinear(epochs * steps_per_epoch, decay_epochs * steps_per_epoch))


def continue_schedule(scheduler: LambdaLR, steps_per_epoch: int, epochs: int, decay_epochs: int, step: int) -> bool:
    """After a resume: keep the restored schedule if it is this run's, else continue from its rate at
    `step` along this run's. Returns whether the schedule changed."""
    schedule = scheduler.lr_lambdas[0]
    constant, decay = epochs * steps_per_epoch, decay_epochs * steps_per_epoch
    if (schedule.constant, schedule.decay) == (constant, decay):
        return False
    value = schedule(step)
    if value == 0.0 and constant + decay > step:
        raise UserError(f"this run's learning rate already reached zero at step {step}: a longer schedule "
                        "cannot go on from zero. To train these weights further, start a new run from them "
                        "with a fresh schedule: a new output_dir and init_from=<this run's output_dir>")
    schedule.constant, schedule.decay = constant, decay
    schedule.start, schedule.value = step, value
    return True
