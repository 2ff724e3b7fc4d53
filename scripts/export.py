#!/usr/bin/env python3
"""Runs `cyclegan.cli.export`: see `--help`, or the program `cyclegan-export` it is installed as."""

from cyclegan.cli import export

if __name__ == "__main__":
    export()
