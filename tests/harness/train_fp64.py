"""scripts/train.py in float64: networks, batches, losses and optimizer states.

For equivalence tests that must hold on any CPU. CPUs differ in the kernels they get (oneDNN,
MKL and ATen pick by instruction set) and so in rounding, which a GAN amplifies within a few
steps; in float64 that rounding stays many orders of magnitude below what a real bug changes.

    [accelerate launch] python tests/harness/train_fp64.py [--transpose-batches] --config FILE key=value ...

`--transpose-batches` swaps the height and width of every batch: a layout bug, for negative controls.
"""

import runpy
import sys
from pathlib import Path

import torch

import cyclegan.trainer

torch.set_default_dtype(torch.float64)
if sys.argv[1] == "--transpose-batches":
    del sys.argv[1]
    to_device = cyclegan.trainer.batch_to_device
    cyclegan.trainer.batch_to_device = lambda *args: {k: v.transpose(2, 3) for k, v in to_device(*args).items()}
sys.argv[0] = str(Path(__file__).resolve().parents[2] / "scripts" / "train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
