"""The paper's learning-rate schedule, counted in optimizer steps: constant, then linear to zero."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class ConstantThenLinear:
    """LR factor 1 for `constant` steps, then falling linearly to 0 over `decay` steps.

    A class rather than a lambda so that LambdaLR can save it in its state_dict.
    """

    def __init__(self, constant: int, decay: int) -> None:
        self.constant, self.decay = constant, decay

    def __call__(self, step: int) -> float:
        if step < self.constant:
            return 1.0
        if self.decay == 0:
            return 0.0
        return max(0.0, 1.0 - (step - self.constant) / self.decay)


def make_scheduler(optimizer: Optimizer, steps_per_epoch: int, epochs: int, decay_epochs: int) -> LambdaLR:
    return LambdaLR(optimizer, ConstantThenLinear(epochs * steps_per_epoch, decay_epochs * steps_per_epoch))
