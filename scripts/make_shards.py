#!/usr/bin/env python3
"""Runs `cyclegan.cli.make_shards`: see `--help`, or the program `cyclegan-make-shards` it is installed as."""

from cyclegan.cli import make_shards

if __name__ == "__main__":
    make_shards()
