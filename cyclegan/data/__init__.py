"""Tar shards: writing them, streaming unpaired A/B batches from them, and demo data."""
