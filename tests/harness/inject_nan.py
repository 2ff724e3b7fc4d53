"""Train with a NaN planted in the third batch.

    python tests/harness/inject_nan.py --config FILE key=value ...
"""

import sys

import cyclegan.trainer
from cyclegan.config import load_config

calls = {"n": 0}
original = cyclegan.trainer.batch_to_device


def poisoned(batch, device, channels_last):
    out = original(batch, device, channels_last)
    calls["n"] += 1
    if calls["n"] == 3:
        out["A"][0, 0, 0, 0] = float("nan")
    return out


cyclegan.trainer.batch_to_device = poisoned
try:
    cyclegan.trainer.train(load_config(sys.argv[2], sys.argv[3:]))
except cyclegan.errors.UserError as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None
