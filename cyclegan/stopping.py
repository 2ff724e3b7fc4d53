"""Stopping every rank at the same step when the job is asked to stop.

A request arrives on some ranks: a signal (SIGTERM from the scheduler or torchrun, SIGINT
from Ctrl-C, SIGUSR1) or a flag file that the Slurm batch script touches when it is warned
of preemption (`CYCLEGAN_STOP_FILE`). After every optimizer step the ranks agree on it with
a MAX all-reduce over a CPU (gloo) group, so the check never waits on the GPU and all ranks
stop after the same step, checkpoint together and exit cleanly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

STOP_FILE_ENV = "CYCLEGAN_STOP_FILE"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    def __init__(self, accelerator: Accelerator) -> None:
        self.requested: str | None = None
        flag = os.environ.get(STOP_FILE_ENV)
        self.flag_file = Path(flag) if flag else None
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        distributed = accelerator.num_processes > 1 and dist.is_initialized()
        self.group = dist.new_group(backend="gloo") if distributed else None

    def _on_signal(self, signum: int, frame) -> None:
        self.requested = signal.Signals(signum).name

    def should_stop(self) -> bool:
        """True on every rank, after the same step, once any rank was asked to stop."""
        if self.requested is None and self.flag_file is not None and self.flag_file.exists():
            self.requested = f"flag file {self.flag_file}"
        if self.group is None:
            return self.requested is not None
        flag = torch.tensor([int(self.requested is not None)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        if flag.item() and self.requested is None:
            self.requested = "another rank"
        return bool(flag.item())
