#!/usr/bin/env python3
"""Runs `cyclegan.cli.demo`: see `--help`, or the program `cyclegan-demo` it is installed as."""

from cyclegan.cli import demo

if __name__ == "__main__":
    demo()
