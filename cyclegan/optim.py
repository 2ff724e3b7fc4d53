"""Skipping optimizer steps whose loss is not finite, without waiting for the device.

Fused Adam takes a `found_inf` tensor and skips the update on the device when it is set (the
mechanism GradScaler uses), so a NaN or inf loss costs one skipped step and no host sync.
Skipped steps are counted on the device and read at logging steps, where a run of
`train.stop_after_nonfinite` skipped steps in a row stops training with a message. Under
fp16 the GradScaler already skips non-finite steps; other Adam implementations need a
host sync per step to skip.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from cyclegan.errors import UserError


class NonFiniteGuard:
    def __init__(self, accelerator: Accelerator, stop_after: int) -> None:
        self.accelerator, self.stop_after = accelerator, stop_after
        device = accelerator.device
        self.pending = {"g": torch.zeros((), dtype=torch.bool, device=device),
                        "d": torch.zeros((), dtype=torch.bool, device=device)}
        self.skipped = torch.zeros((), device=device)  # optimizer steps skipped so far
        self.in_a_row = torch.zeros((), device=device)
        self.longest_run = torch.zeros((), device=device)  # since the last read

    def step(self, name: str, optimizer, loss: torch.Tensor) -> None:
        """`optimizer.step()`, skipped if this or an accumulated micro-step's loss was not finite."""
        self.pending[name] = self.pending[name] | ~torch.isfinite(loss.detach())
        if not self.accelerator.sync_gradients:
            return optimizer.step()  # accumulating: the prepared optimizer does not step
        inner = optimizer.optimizer
        if self.accelerator.scaler is not None:
            optimizer.step()  # the scaler skips non-finite gradients itself
        elif inner.defaults.get("fused"):
            inner.found_inf = self.pending[name].float()
            optimizer.step()
            del inner.found_inf
        elif not self.pending[name].item():
            optimizer.step()
        if name == "d":  # one count per optimizer step of the pair
            bad = (self.pending["g"] | self.pending["d"]).float()
            self.skipped += bad
            self.in_a_row = (self.in_a_row + 1) * bad
            self.longest_run = torch.maximum(self.longest_run, self.in_a_row)
            self.pending = {k: torch.zeros_like(v) for k, v in self.pending.items()}

    def read(self, step: int) -> dict[str, float]:
        """At a logging step: the count, and a stop if too many steps in a row were skipped."""
        skipped, longest = (v.item() for v in self.accelerator.reduce(torch.stack([self.skipped, self.longest_run]), "max"))
        self.longest_run.zero_()
        if self.stop_after and longest >= self.stop_after:
            raise UserError(
                f"stopped at step {step}: {int(longest)} optimizer step(s) in a row had a non-finite (NaN or inf) "
                "loss and were skipped. Lower train.lr, clip gradients (train.grad_clip) or use bf16 instead of "
                "fp16, and resume from the last checkpoint with resume=auto."
            )
        return {"train/skipped_nonfinite_steps": skipped}
