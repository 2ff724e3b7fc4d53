"""Benchmarks; results go to docs/benchmarks.md.

    python scripts/benchmark.py loader --workdir /tmp/bench --workers 0 1 2
"""

import argparse
import json
from pathlib import Path

from cyclegan.benchmark import loader_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    loader = sub.add_parser("loader", help="training-loader images/s on JPEG shards")
    loader.add_argument("--workdir", type=Path, required=True, help="where the synthetic JPEG shards are made")
    loader.add_argument("--images", type=int, default=400, help="JPEGs per domain")
    loader.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="loader worker counts to time (0: in the main process)")
    loader.add_argument("--batches", type=int, default=300, help="timed batches per repetition")
    loader.add_argument("--repeats", type=int, default=3)
    loader.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = loader_benchmark(args.workdir, args.images, args.workers, args.batches, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
