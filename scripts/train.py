"""Train CycleGAN.

    accelerate launch scripts/train.py --config configs/default.yaml data.root=shards/horse2zebra
    python scripts/train.py --config configs/demo.yaml train.max_steps=100 resume=auto
"""

import argparse

from cyclegan.config import load_config
from cyclegan.errors import exit_on_user_error
from cyclegan.trainer import train


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    args = parser.parse_args()
    train(load_config(args.config, args.overrides))


if __name__ == "__main__":
    main()
