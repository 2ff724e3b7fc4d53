"""What the trainer logs: sums kept on the device between two logging steps, read there in one
sync, and the health warnings drawn from them.

Health: each discriminator's accuracy on real and on (pooled) fake images, and how far each
generator moves its input, mean |G(x) - x| on [-1, 1] images. A generator that collapsed to the
identity (official issue #1565: small data sets) shows as that change falling towards 0; a
discriminator that wins completely scores nearly every real and every fake right. Either, held
for `HEALTH_LOGS` logs in a row, prints a one-line warning (once, until it clears).
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from cyclegan.step import StepResult

HEALTH_LOGS = 3  # logs in a row a condition must hold before it is reported


class MetricWindow:
    """Loss, health and gradient-norm sums kept on the device between two logging steps, named
    as the objective logs them (`Objective.log_names`)."""

    def __init__(self, device: torch.device, names: list[str]) -> None:
        self.device, self.names = device, names
        self.optimizers = [n.removeprefix("grad_norm/") for n in names if n.startswith("grad_norm/")]
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names) - len(self.optimizers), device=self.device)
        self.grad_norms = torch.zeros(len(self.optimizers), device=self.device)
        self.micro = self.steps = self.skipped = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(self, result: StepResult, skipped: int, data_wait: float) -> None:
        self.sums += torch.cat([result.losses.stacked(), result.health.stacked()])
        self.micro += 1
        self.skipped += skipped
        self.data_wait += data_wait
        if result.grad_norms is not None:
            self.grad_norms += torch.stack([result.grad_norms[n] for n in self.optimizers]).float()
            self.steps += 1

    def read(self, accelerator: Accelerator, global_batch: int) -> dict[str, float]:
        """Means over the window and over ranks: the one device-to-host sync of a logging step."""
        means = accelerator.reduce(torch.cat([self.sums / self.micro, self.grad_norms / self.steps]), "mean")
        skipped = accelerator.reduce(torch.tensor([float(self.skipped)], device=self.device), "sum")
        seconds = time.perf_counter() - self.started
        values = dict(zip(self.names, means.tolist()))
        values["data/skipped_samples"] = skipped.item()
        values["perf/images_per_s"] = global_batch * self.steps / seconds
        values["perf/seconds_per_step"] = seconds / self.steps
        values["perf/data_wait_fraction"] = self.data_wait / seconds
        return values


class HealthMonitor:
    """One-line warnings when a generator copies its input (mean change below `identity_change`)
    or a discriminator wins (right on more than `winning_accuracy` of real and of fake patches),
    for a while; the thresholds are `tracking.warn_identity_change` and `tracking.warn_d_accuracy`."""

    def __init__(self, identity_change: float, winning_accuracy: float, logs: int = HEALTH_LOGS) -> None:
        self.identity_change, self.winning_accuracy, self.logs = identity_change, winning_accuracy, logs
        self.streaks: dict[str, int] = {}

    def check(self, values: dict[str, float]) -> list[str]:
        """The warnings due at this log (each once, when its condition has held `logs` logs in a row)."""
        conditions = {}
        for g, direction in (("g_ab", "A->B"), ("g_ba", "B->A")):
            if f"health/{g}_change" not in values:  # an objective without this generator
                continue
            change = values[f"health/{g}_change"]
            conditions[g] = (change < self.identity_change,
                             f"{g} ({direction}) has returned its input almost unchanged for {self.logs} logs "
                             f"(mean |G(x) - x| = {change:.4f}): it collapsed to the identity. Try "
                             "train.lambda_identity=0 (cyclegan), train.diffaug=color,translation,cutout, or more data")
        for d in ("d_a", "d_b"):
            if f"health/{d}_real" not in values:
                continue
            real, fake = values[f"health/{d}_real"], values[f"health/{d}_fake"]
            conditions[d] = (min(real, fake) > self.winning_accuracy,
                             f"{d} has told real from fake almost always for {self.logs} logs (accuracy {real:.3f} "
                             f"real, {fake:.3f} fake): the generators get little to learn from. Try "
                             "train.diffaug=color,translation,cutout, or weaker discriminators (model.ndf, model.n_layers_d)")
        warnings = []
        for name, (holds, message) in conditions.items():
            self.streaks[name] = self.streaks.get(name, 0) + 1 if holds else 0
            if self.streaks[name] == self.logs:
                warnings.append(f"warning: {message}")
        return warnings

    def state_dict(self) -> dict[str, dict[str, int]]:
        """The streaks, for a checkpoint: a resumed run neither forgets a condition that was building
        up nor repeats a warning already given."""
        return {"streaks": dict(self.streaks)}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        self.streaks = dict(state["streaks"])
