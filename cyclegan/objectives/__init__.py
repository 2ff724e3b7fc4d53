"""The training objectives, peers over the same building blocks (`cyclegan.step`): each module
says which networks it trains, which optimizer steps which of them, and its one step function.
`model.objective` picks one; the trainer, checkpoints, logging and the benchmark ask it, and
never test which one it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cyclegan.config import RunConfig
from cyclegan.objectives import cut, cyclegan
from cyclegan.step import Networks, Stacked, StepResult


@dataclass(frozen=True)
class Objective:
    name: str
    build_networks: Callable[[RunConfig], Networks]
    optimized: dict[str, tuple[str, ...]]  # optimizer name -> the networks it steps
    train_step: Callable[..., StepResult]
    losses: type[Stacked]
    health: type[Stacked]

    def log_names(self) -> list[str]:
        """What a step's result is logged as, in the order `MetricWindow` sums it."""
        return ([f"loss/{n}" for n in self.losses.names()] + [f"health/{n}" for n in self.health.names()]
                + [f"grad_norm/{n}" for n in self.optimized])


CYCLEGAN = Objective("cyclegan", cyclegan.build_networks, cyclegan.OPTIMIZED, cyclegan.train_step,
                     cyclegan.StepLosses, cyclegan.StepHealth)
CUT = Objective("cut", cut.build_networks, cut.OPTIMIZED, cut.train_step, cut.CutLosses, cut.CutHealth)
OBJECTIVES = {"cyclegan": CYCLEGAN, "cut": CUT, "fastcut": CUT}  # FastCUT: CUT with other settings


def objective_for(cfg: RunConfig) -> Objective:
    return OBJECTIVES[cfg.model.objective]
