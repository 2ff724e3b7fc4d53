#!/usr/bin/env python3
"""Runs `cyclegan.cli.train`: see `--help`, or the program `cyclegan-train` it is installed as."""

from cyclegan.cli import train

if __name__ == "__main__":
    train()
