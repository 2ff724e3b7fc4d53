"""Read one rank's training stream and print its batches' sample keys as JSON.

    python tests/harness/read_stream.py SHARDS RANK WORLD WORKERS SEED BATCHES [SKIP]
"""

import json
import sys

from cyclegan.config import DataConfig
from cyclegan.data.stream import UnpairedStream, find_sources, train_loader

shards, rank, world, workers, seed, batches = sys.argv[1], *map(int, sys.argv[2:7])
skip = int(sys.argv[7]) if len(sys.argv) > 7 else 0
cfg = DataConfig(root=shards, load_size=36, crop_size=32, num_workers=workers, shuffle_buffer=8)
stream = UnpairedStream(find_sources(cfg), cfg, batch_size=2, batches_per_epoch=batches, seed=seed,
                        rank=rank, world_size=world)
out = {}
for epoch in (0, 1):
    stream.set_epoch(epoch, skip)
    out[epoch] = [{"A": b["key_a"], "B": b["key_b"], "sum": int(b["A"].sum() + b["B"].sum())} for b in train_loader(stream)]
print(json.dumps(out))
