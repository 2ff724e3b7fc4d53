#!/usr/bin/env python3
"""Runs `cyclegan.cli.evaluate`: see `--help`, or the program `cyclegan-evaluate` it is installed as."""

from cyclegan.cli import evaluate

if __name__ == "__main__":
    evaluate()
