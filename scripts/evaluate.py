"""Score a trained CycleGAN on the test split: FID and KID per direction, plus L1, PSNR and
SSIM when the test split is paired (same file names in testA and testB).

    python scripts/evaluate.py --checkpoint runs/h2z --data shards/h2z --inception-weights weights.pth
    accelerate launch --num_processes 8 scripts/evaluate.py ...      # split across GPUs
"""

import argparse
import json
from pathlib import Path

from accelerate import Accelerator

from cyclegan.config import DataConfig
from cyclegan.data.sources import find_sources
from cyclegan.errors import DataError, exit_on_user_error
from cyclegan.evaluation import Evaluator, format_table, load_generator_pair, load_inception, load_test_split


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="run, export or checkpoint folder")
    parser.add_argument("--data", type=Path, required=True, help="shard folder (with manifest.json) or testA/ testB/ root")
    parser.add_argument("--inception-weights", help="local Inception file for FID/KID (or CYCLEGAN_INCEPTION_WEIGHTS)")
    parser.add_argument("--paired-only", action="store_true", help="skip FID and KID (no Inception weights needed)")
    parser.add_argument("--size", type=int, default=256, help="test images are resized to this square")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-images", type=int, help="score only the first N test images per domain")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    accelerator = Accelerator()
    if not args.data.exists():
        raise DataError(f"--data {args.data} does not exist")
    source = find_sources(DataConfig(root=str(args.data))) if (args.data / "manifest.json").is_file() else args.data
    features = None if args.paired_only else load_inception(args.inception_weights)
    g_ab, g_ba = (net.to(accelerator.device) for net in load_generator_pair(args.checkpoint))
    split = load_test_split(source, args.size, accelerator.process_index, accelerator.num_processes, args.max_images)
    evaluator = Evaluator(accelerator, split, features, args.batch_size, args.kid_subsets, args.kid_subset_size)
    results = evaluator(g_ab, g_ba)
    if accelerator.is_main_process:
        print(format_table(results))
        print(json.dumps(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    accelerator.end_training()


if __name__ == "__main__":
    main()
