"""Train with a NaN planted at the third batch, on the ranks given: in the batch (the loss is
NaN) or in one generator gradient (the loss stays finite).

    [accelerate launch] python tests/harness/inject_nan.py batch|grad RANKS --config FILE key=value ...
"""

import os
import sys

import cyclegan.trainer
from cyclegan.config import load_config
from cyclegan.errors import exit_on_user_error

where, ranks = sys.argv[1], {int(r) for r in sys.argv[2].split(",")}
poisoned = int(os.environ.get("RANK", "0")) in ranks
batches = {"n": 0}
to_device, build = cyclegan.trainer.batch_to_device, cyclegan.trainer.build_training


def counted(batch, device, channels_last):
    out = to_device(batch, device, channels_last)
    batches["n"] += 1
    if poisoned and where == "batch" and batches["n"] == 3:
        out["A"][0, 0, 0, 0] = float("nan")
    return out


def hooked(accelerator, cfg):
    nets, opts, pools = build(accelerator, cfg)
    first = next(accelerator.unwrap_model(nets.g_ab).parameters())
    first.register_hook(lambda grad: grad * float("nan") if poisoned and where == "grad" and batches["n"] == 3 else grad)
    return nets, opts, pools


cyclegan.trainer.batch_to_device, cyclegan.trainer.build_training = counted, hooked
exit_on_user_error(lambda: cyclegan.trainer.train(load_config(sys.argv[4], sys.argv[5:])))()
