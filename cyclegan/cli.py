"""The command lines: `cyclegan-train`, `cyclegan-make-shards`, `cyclegan-translate`,
`cyclegan-evaluate`, `cyclegan-export` and `cyclegan-demo` (installed as programs), also run as `scripts/*.py`.
Each parses its arguments first (its parser is a function of its own, so that tests can check
the README's commands against it), then imports and calls the package; a user's mistake ends in
a one-line message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cyclegan.errors import exit_on_user_error


def _parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def train_parser() -> argparse.ArgumentParser:
    """Train CycleGAN.

    accelerate launch scripts/train.py --config configs/default.yaml data.root=shards/horse2zebra
    cyclegan-train --config configs/demo.yaml train.max_steps=100 resume=auto
    """
    parser = _parser(train_parser.__doc__)
    parser.add_argument("--config", help="YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-4")
    return parser


@exit_on_user_error
def train() -> None:
    args = train_parser().parse_args()

    from cyclegan.config import load_config
    from cyclegan.trainer import train as run_training

    run_training(load_config(args.config, args.overrides))


def make_shards_parser() -> argparse.ArgumentParser:
    """Pack trainA/ trainB/ [testA/ testB/] image folders into WebDataset tar shards.

    cyclegan-make-shards --input datasets/horse2zebra --output shards/horse2zebra
    cyclegan-make-shards --domain-a photos/ --domain-b paintings/ --output shards/p2p
    """
    parser = _parser(make_shards_parser.__doc__)
    parser.add_argument("--input", type=Path, help="folder holding trainA/ trainB/ and optionally testA/ testB/")
    parser.add_argument("--domain-a", type=Path, help="any folder of domain A images (instead of --input)")
    parser.add_argument("--domain-b", type=Path, help="any folder of domain B images (instead of --input)")
    parser.add_argument("--output", type=Path, required=True, help="shard folder to create")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--max-side", type=int, default=None, help="downsize images whose longer side exceeds N")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--keep-depth", action="store_true",
                        help="store 16-bit and float images unquantised (16-bit PNG, float TIFF) instead of as 8-bit "
                             "RGB; .npy arrays are always stored as they are")
    return parser


@exit_on_user_error
def make_shards() -> None:
    args = make_shards_parser().parse_args()

    from cyclegan.data.shards import find_domains, report, write_shards

    sources = find_domains(args.input, args.domain_a, args.domain_b)
    manifest = write_shards(sources, args.output, args.shard_size, args.max_side, args.overwrite, args.workers,
                            args.keep_depth)
    print(report(manifest, args.output))


def translate_parser() -> argparse.ArgumentParser:
    """Translate images, folders of images, tar shards or a video with a generator checkpoint.

    cyclegan-translate --checkpoint runs/h2z/export --input photos/ --output out/
    cyclegan-translate --checkpoint latest_net_G_A.pth --input scene.tif --output out/ --tile 1024
    cyclegan-translate --checkpoint runs/h2z/export --input clip.mp4 --output clip-zebra.mp4
    accelerate launch --num_processes 8 scripts/translate.py --checkpoint runs/gta/export \\
        --input shards/gta5 --output shards/gta5-as-cityscapes
    """
    parser = _parser(translate_parser.__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run, export, checkpoint or Hugging Face folder, Hub id, official .pth, "
                             "exported .safetensors, or .onnx")
    parser.add_argument("--input", required=True,
                        help="an image or a folder (searched recursively); a shard folder, shard files, patterns "
                             "or URLs (as data.train_a takes); or a video (mp4, mov, mkv, webm)")
    parser.add_argument("--output", type=Path, required=True,
                        help="folder for translated images or shards; for a video, a file or a folder")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default=None,
                        help="which generator of a run or export folder, and so which domain of a shard folder "
                             "(default: AtoB, or what a file's name or a Hugging Face config says; a CUT model has "
                             "AtoB only)")
    parser.add_argument("--load-size", type=int, default=None,
                        help="resize images to NxN (bicubic) like the official test; default keeps each size")
    parser.add_argument("--batch-size", type=int, default=4, help="images or frames of equal size per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="fp32: the official pixels on every machine; bf16: about 2.1x faster where the device "
                             "computes it natively (recent GPUs, CPUs with AVX512-BF16 or AMX; measured on an AMX "
                             "CPU), pixels off by 1.3 levels of 255 on average; auto: bf16 where native, else fp32")
    parser.add_argument("--tile", type=int, default=None,
                        help="translate in N-pixel tiles, exactly (whole-image statistics); 0: never; default: "
                             "only images that would not fit in memory whole")
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help="video only: temporal smoothing against flicker, 0 (off) to below 1")
    parser.add_argument("--normalize", default=None,
                        help="how deep inputs (16-bit, float, .npy) map onto [-1, 1]: dtype, range:LO,HI or "
                             "percentile:P1,P99 (default: the run's setting for the input's domain when --checkpoint "
                             "is a run folder, else dtype)")
    parser.add_argument("--normalize-output", default=None,
                        help="the output domain's, inverted to write outputs at the input's type (default: the run's "
                             "setting for that domain, else --normalize)")
    parser.add_argument("--output-range", choices=("window", "dtype"), default="window",
                        help="deep outputs: the inverse of the output domain's normalisation (window), or [-1, 1] "
                             "spread over the type's full range (dtype)")
    return parser


@exit_on_user_error
def translate() -> None:
    args = translate_parser().parse_args()

    try:  # the import too: Ctrl-C while torch loads is a stop like any other
        from cyclegan.translate import run

        run(args.checkpoint, args.input, args.output, args.direction, args.load_size, args.batch_size, args.device,
            args.precision, args.tile, args.smoothing, args.normalize, args.normalize_output, args.output_range)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch every rank is stopped: one says so
            print(f"\nstopped (interrupted): {_left_behind(args.input, args.output)}", file=sys.stderr)
        raise SystemExit(130) from None


def _left_behind(source: str, output: Path) -> str:
    """What a stopped translation leaves, by input kind: every finished image or shard is complete
    (written under a temporary name, renamed when whole) and a rerun keeps it; a video is one
    output, so a rerun starts it over. The video module is loaded before any video is read."""
    video = sys.modules.get("cyclegan.translate.video")
    if video and Path(source).suffix.lower() in video.VIDEO_EXTENSIONS:
        return f"{output} was not written (a video is written whole); run the same command again to translate it"
    return f"the outputs finished so far in {output} are complete; run the same command again to translate the rest"


def evaluate_parser() -> argparse.ArgumentParser:
    """Score a trained CycleGAN on the test split: FID and KID per direction, plus L1, PSNR and
    SSIM when the test split is paired (same file names in testA and testB). A CUT model is
    scored A -> B, the one way it translates.

    cyclegan-evaluate --checkpoint runs/h2z --data shards/h2z --inception-weights weights.pth
    accelerate launch --num_processes 8 scripts/evaluate.py ...      # split across GPUs
    """
    parser = _parser(evaluate_parser.__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run, export or checkpoint folder, a folder of official files (CycleGAN's "
                             "latest_net_G_A.pth and latest_net_G_B.pth, or CUT's latest_net_G.pth and "
                             "latest_net_F.pth), or a CUT model's Hugging Face folder")
    parser.add_argument("--data", type=Path, required=True,
                        help="shard folder (with manifest.json) or testA/ testB/ root")
    parser.add_argument("--inception-weights", help="local Inception file for FID/KID (or CYCLEGAN_INCEPTION_WEIGHTS)")
    parser.add_argument("--paired-only", action="store_true", help="skip FID and KID (no Inception weights needed)")
    parser.add_argument("--size", type=int, default=256, help="test images are resized to this square")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-images", type=int, help="score only the first N test images per domain")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--normalize", default=None,
                        help="how domain A's samples map onto [-1, 1]: dtype, range:LO,HI or percentile:P1,P99 "
                             "(default: the run's data.normalize when --checkpoint is in a run folder, else dtype)")
    parser.add_argument("--normalize-b", default=None,
                        help="domain B's (default: the run's setting for B, else --normalize)")
    return parser


@exit_on_user_error
def evaluate() -> None:
    args = evaluate_parser().parse_args()

    from accelerate import Accelerator

    from cyclegan.config import DataConfig, run_normalize
    from cyclegan.data.sources import check_samples, find_sources
    from cyclegan.errors import DataError
    from cyclegan.evaluation import Evaluator, format_table, load_generator_pair, load_inception, load_test_split
    from cyclegan.io.outputs import prepare_output
    from cyclegan.io.records import write_json

    accelerator = Accelerator()
    if not args.data.exists():
        raise DataError(f"--data {args.data} does not exist")
    if args.json:  # before minutes of work: never over a file this command reads
        prepare_output(args.json, _read_by_evaluation(args.checkpoint, args.data, args.inception_weights),
                       overwrite=True, staged=True, nested=True)
    source = find_sources(DataConfig(root=str(args.data))) if (args.data / "manifest.json").is_file() else args.data
    features = None if args.paired_only else load_inception(args.inception_weights)
    g_ab, g_ba = (net if net is None else net.to(accelerator.device) for net in load_generator_pair(args.checkpoint))
    channels = (g_ab.spec.in_channels, g_ab.spec.out_channels)  # the test images take the generators' channels
    run = run_normalize(args.checkpoint)
    normalize = args.normalize or (run[0] if run else "dtype")
    normalizations = (normalize, args.normalize_b or (run[1] if run else normalize))
    if not isinstance(source, Path):
        for warning in check_samples(source, channels, normalizations):
            accelerator.print(f"warning: {warning}")
    split = load_test_split(source, args.size, accelerator.process_index, accelerator.num_processes, args.max_images,
                            channels, normalizations)
    evaluator = Evaluator(accelerator, split, features, args.batch_size, args.kid_subsets, args.kid_subset_size)
    if features is None and not evaluator.paired:  # every rank decides alike: `paired` is gathered
        raise DataError(f"--data {args.data}: the test images of A and B do not pair ({evaluator.pairing}), so "
                        "--paired-only has nothing to compute: give paired test data, or drop --paired-only for FID/KID")
    results = evaluator(g_ab, g_ba)
    if accelerator.is_main_process:
        print(format_table(results))
        print(json.dumps(results))
        if args.json:
            write_json(args.json, results)
    accelerator.end_training()


def _read_by_evaluation(checkpoint: Path, data: Path, inception: str | None) -> list[Path]:
    """The files and folders `cyclegan-evaluate` reads, which its --json must not replace: the
    checkpoint, its generators and their sidecars, its run's config, the data and its manifest,
    the Inception weights."""
    from cyclegan.errors import UserError
    from cyclegan.evaluation import INCEPTION_ENV
    from cyclegan.models.loading import resolve_generator_path

    read = [checkpoint, data, *(data.rglob("*") if data.is_dir() else ())]  # its manifest, shards or images
    for direction in ("AtoB", "BtoA"):
        try:
            weights = resolve_generator_path(checkpoint, direction)
        except UserError:  # said when the generators are loaded
            continue
        read += [weights, weights.with_suffix(".json"), weights.parent / "config.json"]
    for folder in (checkpoint, *checkpoint.resolve().parents[:3]):
        read += [folder / "config.yaml", folder / "run.json"]
    weights_file = inception or os.environ.get(INCEPTION_ENV)
    return [path for path in read + ([Path(weights_file)] if weights_file else []) if path.exists()]


def export_parser() -> argparse.ArgumentParser:
    """Export a generator as ONNX or as a Hugging Face model folder (with a model card).

    cyclegan-export --checkpoint runs/h2z --format onnx --output h2z-AtoB.onnx
    cyclegan-export --checkpoint runs/h2z --format hf --output h2z-AtoB/ --push-to-hub me/horse2zebra
    cyclegan-export --checkpoint latest_net_G_A.pth --format onnx --output horse2zebra.onnx
    """
    parser = _parser(export_parser.__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run, export, checkpoint or official folder, official .pth, or exported .safetensors")
    parser.add_argument("--format", choices=("onnx", "hf"), required=True)
    parser.add_argument("--output", type=Path, required=True, help="the .onnx file, or the Hugging Face folder")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default=None,
                        help="which generator of a folder (AtoB unless a file's name says otherwise; a CUT "
                             "model has AtoB only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--push-to-hub", metavar="REPO", help="hf: also upload the folder to this Hub repo")
    return parser


@exit_on_user_error
def export() -> None:
    parser = export_parser()
    args = parser.parse_args()

    if args.push_to_hub and args.format != "hf":
        parser.error("--push-to-hub uploads a Hugging Face folder: use it with --format hf")

    from cyclegan.export import export_hf, export_onnx, push_to_hub, run_folder
    from cyclegan.io.outputs import prepare_output
    from cyclegan.models import load_generator
    from cyclegan.models.loading import generator_direction, resolve_generator_path

    weights = resolve_generator_path(args.checkpoint, args.direction)
    run = run_folder(weights.resolve())
    # the export is written beside the output and swapped in whole, so nothing goes before it is complete
    # a new file or folder may go inside the run; an existing one there is never replaced
    prepare_output(args.output, [args.checkpoint, weights, *([run] if run else [])], args.overwrite, staged=True,
                   nested=not args.output.exists())
    direction = args.direction or generator_direction(weights) or "AtoB"
    net = load_generator(weights)
    if args.format == "onnx":
        worst = export_onnx(net, args.output, direction)
        print(f"wrote {args.output} ({direction}); onnxruntime matches PyTorch within {worst:.1e}")
        return
    export_hf(net, args.output, direction, weights, run)
    print(f"wrote {args.output} ({direction}: config.json, model.safetensors, README.md; app.py runs it as a Space)")
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(args.output, args.push_to_hub)}")


def demo_parser() -> argparse.ArgumentParser:
    """Try a trained model in the browser: a Gradio page to upload images or a video, translate
    them either way, compare and download (needs the demo extra: pip install -e '.[demo]').

    cyclegan-demo --checkpoint runs/h2z
    cyclegan-demo --checkpoint latest_net_G_A.pth --host 0.0.0.0 --port 8080 --concurrency 2
    """
    parser = _parser(demo_parser.__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="run, export, checkpoint, Hugging Face or official folder, official .pth, or exported "
                             ".safetensors")
    parser.add_argument("--host", default=None,
                        help="address to serve on (default: GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 for every "
                             "interface)")
    parser.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT, else 7860")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="as cyclegan-translate's --precision")
    parser.add_argument("--tile", type=int, default=None,
                        help="translate in N-pixel tiles, exactly; 0: never; default: only images that would not "
                             "fit in memory whole")
    parser.add_argument("--max-pixels", type=_pixel_count, default=None,
                        help="refuse images (and video frames) larger than this, e.g. 5e7 (the default: 50 "
                             "megapixels)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests translated at once (the rest queue)")
    return parser


def _pixel_count(text: str) -> int:
    """A count of pixels, written as an integer or as 5e7."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no pixel count (a whole number such as 50000000 or 5e7)")
    return int(value)


@exit_on_user_error
def demo() -> None:
    args = demo_parser().parse_args()

    from cyclegan.errors import UserError

    try:
        from cyclegan.app.page import DEFAULT_MAX_PIXELS, serve
    except ImportError as err:
        if err.name and err.name.split(".")[0] in ("gradio", "gradio_client"):
            raise UserError("the demo page needs Gradio: pip install -e '.[demo]'") from None
        raise
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    serve(args.checkpoint, args.host, args.port, args.device, args.precision, args.tile, max_pixels, args.concurrency)
