"""Train, but nudge one weight of g_ab on rank 1 after step 1: the rank check must catch it.

    accelerate launch ... tests/harness/diverge.py --config FILE key=value ...
"""

import sys

import torch

from cyclegan.config import load_config
from cyclegan.trainer import Trainer


class DivergingTrainer(Trainer):
    def after_step(self, window, bar) -> None:
        if self.state.step == 1 and self.acc.process_index == 1:
            with torch.no_grad():
                next(self.acc.unwrap_model(self.nets.g_ab).parameters()).view(-1)[0] += 1e-3
        super().after_step(window, bar)


DivergingTrainer(load_config(sys.argv[2], sys.argv[3:])).run()
