#!/usr/bin/env python3
"""Runs `cyclegan.cli.translate`: see `--help`, or the program `cyclegan-translate` it is installed as."""

from cyclegan.cli import translate

if __name__ == "__main__":
    translate()
