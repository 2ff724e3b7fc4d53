"""scripts/train.py in float64: networks, batches, losses and optimizer states.

For equivalence tests that must hold on any CPU: float64 convolutions do not go through the
kernels whose rounding differs between CPUs, and float64 rounding stays far below what a
real bug changes, even after a GAN has amplified it for a few steps.

    [accelerate launch] python tests/harness/train_fp64.py --config FILE key=value ...
"""

import runpy
import sys
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)
sys.argv[0] = str(Path(__file__).resolve().parents[2] / "scripts" / "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
