#!/usr/bin/env python3
"""Draw the synthetic demo dataset (two styles of procedural scenes) as trainA/ trainB/ testA/ testB/."""

import argparse
from pathlib import Path

from cyclegan.data.demo import write_demo_folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--train", type=int, default=160, help="training images per domain")
    parser.add_argument("--test", type=int, default=24, help="paired test scenes")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_demo_folders(args.output, args.train, args.test, args.size, args.seed)
    print(f"wrote demo images to {args.output}")


if __name__ == "__main__":
    main()
