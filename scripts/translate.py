"""Translate an image or a folder of images with a generator checkpoint.

    python scripts/translate.py --checkpoint latest_net_G_A.pth --input photos/ --output out/
"""

import argparse
from pathlib import Path

from cyclegan.errors import exit_on_user_error
from cyclegan.translate import translate_files


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="official .pth state_dict, exported .safetensors, or an export folder")
    parser.add_argument("--input", type=Path, required=True, help="an image or a folder (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the translated PNGs")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                        help="which generator of an export folder to use")
    parser.add_argument("--load-size", type=int, default=None,
                        help="resize to NxN (bicubic) like the official test; default keeps each image's size")
    parser.add_argument("--batch-size", type=int, default=4, help="images of equal size per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    args = parser.parse_args()
    report = translate_files(
        args.checkpoint, args.input, args.output, args.load_size, args.batch_size, args.device, args.bf16, args.direction
    )
    print(report.summary(args.output))


if __name__ == "__main__":
    main()
