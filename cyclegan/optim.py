"""Optimizer steps that every rank takes, or skips, together, without waiting for the device.

Under DDP the gradients are averaged across ranks before they are read here, so their norm
is the same number on every rank. An optimizer step is skipped when that norm is not finite:
a NaN or inf loss on any rank, or a finite loss whose gradients overflowed. Every rank
decides the same without talking to the others. Fused Adam takes the decision as a
`found_inf` tensor and skips the update on the device (the mechanism GradScaler uses), so a
skipped step costs no host sync; other Adam implementations read the decision on the host,
one sync per optimizer step.

Under fp16 the GradScaler makes the same decision from the same gradients. Every backward
pass of an optimizer step, over all micro-batches of an accumulation window and both
optimizers, uses one scale, updated once after both optimizers stepped. (Accelerate's
wrapped optimizer updates the scale inside each `step()`: the generators step before the
discriminators' last backward, so the discriminators' earlier micro-batches would be
unscaled with a scale they were not scaled by, and the growth interval would count twice.)

Skipped steps are counted on the device and read at logging steps (under fp16 the scale's
overflow back-offs count too); a run of `train.stop_after_nonfinite` skipped steps in a row
stops training. Checkpoints keep the counts, so a resumed run goes on from them. The
prepared optimizers' own `step()` is never called, so Accelerate's `optimizer_step_was_skipped`
is not kept; nothing here reads it. Every rank must hold the whole averaged gradients (one
process or DDP; `make_accelerator` refuses FSDP and DeepSpeed).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


class StepGuard:
    def __init__(self, accelerator: Accelerator, stop_after: int) -> None:
        self.accelerator, self.stop_after = accelerator, stop_after
        device = accelerator.device
        self.skipping = torch.zeros((), dtype=torch.bool, device=device)  # this step: an optimizer skipped
        self.skipped = torch.zeros((), device=device)  # steps skipped so far
        self.in_a_row = torch.zeros((), device=device)
        self.longest_run = torch.zeros((), device=device)  # since the last read

    def step(self, optimizer, max_norm: float) -> torch.Tensor | None:
        """At the end of an accumulation window: unscale (fp16), measure the gradient norm, clip
        if asked, and step unless the norm is not finite. Returns the norm (None while accumulating)."""
        if not self.accelerator.sync_gradients:
            return None
        inner, scaler = optimizer.optimizer, self.accelerator.scaler
        if scaler is not None:
            scaler.unscale_(inner)
        params = [p for group in inner.param_groups for p in group["params"]]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        bad = ~torch.isfinite(norm)
        if scaler is not None:
            scaler.step(inner)  # skips on non-finite gradients, from its own check of the same gradients
        elif inner.defaults.get("fused"):
            inner.found_inf = bad.float()
            inner.step()
            del inner.found_inf
        elif not bad.item():
            inner.step()
        self.skipping |= bad
        return norm

    def end_step(self) -> None:
        """After both optimizers: one scale update (fp16), and the count of skipped steps."""
        if not self.accelerator.sync_gradients:
            return
        if self.accelerator.scaler is not None:
            self.accelerator.scaler.update()
        bad = self.skipping.float()
        self.skipped += bad
        self.in_a_row = (self.in_a_row + 1) * bad
        self.longest_run = torch.maximum(self.longest_run, self.in_a_row)
        self.skipping = torch.zeros_like(self.skipping)

    def read(self) -> tuple[dict[str, float], int]:
        """At a logging step: the count of skipped steps, and the longest run of them in a row since
        the last read if it reached `stop_after` (0 otherwise). Every rank holds the same counts."""
        skipped, longest = torch.stack([self.skipped, self.longest_run]).tolist()
        self.longest_run.zero_()
        longest = int(longest)
        stop = longest if self.stop_after and longest >= self.stop_after else 0
        return {"train/skipped_nonfinite_steps": skipped}, stop

    def state_dict(self) -> dict[str, float]:
        """The counts, for a checkpoint: a resumed run goes on counting from them (one host sync,
        at saves only). Every rank holds the same counts."""
        skipped, in_a_row, longest = torch.stack([self.skipped, self.in_a_row, self.longest_run]).tolist()
        return {"skipped": skipped, "in_a_row": in_a_row, "longest_run": longest}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.skipped.fill_(state["skipped"])
        self.in_a_row.fill_(state["in_a_row"])
        self.longest_run.fill_(state["longest_run"])
