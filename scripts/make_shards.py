"""Pack trainA/ trainB/ [testA/ testB/] image folders into WebDataset tar shards.

    python scripts/make_shards.py --input datasets/horse2zebra --output shards/horse2zebra
    python scripts/make_shards.py --domain-a photos/ --domain-b paintings/ --output shards/p2p
"""

import argparse
import os
from pathlib import Path

from cyclegan.data.shards import find_domains, report, write_shards
from cyclegan.errors import exit_on_user_error


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="folder holding trainA/ trainB/ and optionally testA/ testB/")
    parser.add_argument("--domain-a", type=Path, help="any folder of domain A images (instead of --input)")
    parser.add_argument("--domain-b", type=Path, help="any folder of domain B images (instead of --input)")
    parser.add_argument("--output", type=Path, required=True, help="shard folder to create")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--max-side", type=int, default=None, help="downsize images whose longer side exceeds N")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args()
    sources = find_domains(args.input, args.domain_a, args.domain_b)
    manifest = write_shards(sources, args.output, args.shard_size, args.max_side, args.overwrite, args.workers)
    print(report(manifest, args.output))


if __name__ == "__main__":
    main()
