"""Read an offline W&B run file (`run-<id>.wandb`) back: the tests' view of what was logged.

The file is a 7-byte header (`:W&B`, magic 0xBEE1, version 0) followed by 32 KiB blocks of
records, each a 4-byte CRC32, a 2-byte length and a 1-byte type (1 full, 2 first, 3 middle,
4 last) before its data; a block's tail shorter than a record header is padding. Each record
is a `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:
            position += room
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if length == 0 and kind == 0:  # zero padding at the end of a block
            position += room
            continue
        payload = data[position + HEADER:position + HEADER + length]
        assert zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF == checksum, "corrupt record"
        position += HEADER + length
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict:
    """{"history": [{key: value}], "config": {...}, "summary": {...}, "run_id": str} of one run file."""
    out: dict = {"history": [], "config": {}, "summary": {}, "run_id": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "run":
            out["run_id"] = record.run.run_id
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    return out
