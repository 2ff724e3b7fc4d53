"""Translate images, folders of images, tar shards or a video with a generator checkpoint.

    python scripts/translate.py --checkpoint runs/h2z/export --input photos/ --output out/
    python scripts/translate.py --checkpoint latest_net_G_A.pth --input scene.tif --output out/ --tile 1024
    python scripts/translate.py --checkpoint runs/h2z/export --input clip.mp4 --output clip-zebra.mp4
    accelerate launch --num_processes 8 scripts/translate.py --checkpoint runs/gta/export \\
        --input shards/gta5 --output shards/gta5-as-cityscapes
"""

import argparse
from pathlib import Path

from cyclegan.errors import exit_on_user_error
from cyclegan.translate import run


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="official .pth state_dict, exported .safetensors, or an export folder")
    parser.add_argument("--input", required=True,
                        help="an image or a folder (searched recursively); a shard folder, shard paths, patterns "
                             "or URLs (as data.train_a takes); or a video (mp4, mov, mkv, webm)")
    parser.add_argument("--output", type=Path, required=True,
                        help="folder for translated images or shards; for a video, a file or a folder")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                        help="which generator of an export folder, and which domain of a shard folder")
    parser.add_argument("--load-size", type=int, default=None,
                        help="resize images to NxN (bicubic) like the official test; default keeps each size")
    parser.add_argument("--batch-size", type=int, default=4, help="images or frames of equal size per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 where the device computes it natively (recent GPUs, CPUs with AVX512-BF16 "
                             "or AMX), else fp32")
    parser.add_argument("--tile", type=int, default=None,
                        help="translate in N-pixel tiles, exactly (whole-image statistics); 0: never; default: "
                             "only images that would not fit in memory whole")
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help="video only: temporal smoothing against flicker, 0 (off) to below 1")
    args = parser.parse_args()
    run(args.checkpoint, args.input, args.output, args.direction, args.load_size, args.batch_size, args.device,
        args.precision, args.tile, args.smoothing)


if __name__ == "__main__":
    main()
