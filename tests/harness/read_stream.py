"""Read one rank's training stream and print its batches' sample keys as JSON, per epoch.

    python tests/harness/read_stream.py DATA_CONFIG_JSON RANK WORLD WORKERS SEED BATCHES SKIP EPOCHS
"""

import json
import sys

from cyclegan.config import DataConfig
from cyclegan.data.sources import find_sources
from cyclegan.data.stream import UnpairedStream, train_loader

data, (rank, world, workers, seed, batches, skip, epochs) = json.loads(sys.argv[1]), map(int, sys.argv[2:9])
cfg = DataConfig(**{"load_size": 36, "crop_size": 32, "shuffle_buffer": 8, **data, "num_workers": workers})
stream = UnpairedStream(find_sources(cfg), cfg, batch_size=2, batches_per_epoch=batches, seed=seed,
                        rank=rank, world_size=world)
out = {}
for epoch in range(epochs):
    stream.set_epoch(epoch, skip)
    out[epoch] = [{"A": b["key_a"], "B": b["key_b"], "sum": int(b["A"].sum() + b["B"].sum())} for b in train_loader(stream)]
print(json.dumps(out))
