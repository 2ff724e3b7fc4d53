"""Translation speed and memory for docs/benchmarks.md: image folders and shards at several sizes,
large images through the exact tiles (time and peak memory, measured in a process of their own),
and video frames/s. The paper's generator (ngf 64, 9 blocks) with random weights: speed does
not depend on the values. Prints markdown rows ready to paste."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from cyclegan.benchmarks.loader import write_photo_like_jpegs
from cyclegan.data.shards import find_domains, write_shards
from cyclegan.hardware import machine
from cyclegan.io.outputs import prepare_output
from cyclegan.models import GeneratorSpec, ResnetGenerator, load_generator
from cyclegan.models.loading import export_generator
from cyclegan.translate.core import Translator, pick_device, use_bf16
from cyclegan.translate.run import run

LARGE_IMAGE = """
import json, shutil, sys, tempfile, threading, time
import numpy as np, torch
from PIL import Image
from cyclegan.models import load_generator
from cyclegan.translate.core import Translator, pick_device, use_bf16
checkpoint, side, tile, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
device = pick_device("auto")
translator = Translator(load_generator(checkpoint), device, use_bf16(precision, device), tile)
coarse = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
pixels = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC))
def high_water():  # this process's peak RSS in GiB (ru_maxrss would count the parent's, from before exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20
before = high_water()
scratch, done, used = {"peak": 0}, threading.Event(), shutil.disk_usage(tempfile.gettempdir()).used
def watch():  # the scratch files (unlinked, so only the disk's use shows them), every 0.2 s
    while not done.wait(0.2):
        scratch["peak"] = max(scratch["peak"], shutil.disk_usage(tempfile.gettempdir()).used - used)
threading.Thread(target=watch, daemon=True).start()
start = time.perf_counter()
translator.translate([pixels])
seconds = time.perf_counter() - start
done.set()
peak = high_water()
print(json.dumps({"side": side, "seconds": seconds, "peak_rss_gib": peak, "before_gib": before,
                  "scratch_gib": scratch["peak"] / 2**30}))
"""


def timed_run(source: Path | str, output: Path, checkpoint: Path, precision: str, **options) -> float:
    """Seconds to translate `source` into a fresh `output` (a kept one would be resumed: nothing to do)."""
    prepare_output(output, [Path(source), checkpoint], overwrite=True)
    start = time.perf_counter()
    run(checkpoint, str(source), output, precision=precision, **options)
    return time.perf_counter() - start


def clip(path: Path, side: int, frames: int) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = side
        for _ in range(frames):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def translate_benchmark(workdir: Path, sizes: list[int], images: int, large: list[int], frames: int,
                        precision: str, tile: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / "g_ab.safetensors"
    torch.manual_seed(0)
    export_generator(ResnetGenerator(GeneratorSpec()), checkpoint)
    rows = []
    for side in sizes:
        folders = write_photo_like_jpegs(workdir / f"images-{side}", images, side)
        shards = workdir / f"shards-{side}"
        if not (shards / "manifest.json").is_file():
            write_shards(find_domains(folders, None, None), shards, shard_size=max(1, images // 2), workers=1)
        timed_run(folders / "trainA" / "00000.jpg", workdir / f"warmup-{side}", checkpoint, precision, tile=0)
        for kind, source in (("folder", folders / "trainA"), ("shards", shards)):
            seconds = timed_run(source, workdir / f"out-{kind}-{side}", checkpoint, precision, tile=0)
            rows.append({"what": f"{kind}, {side} px", "per_s": images / seconds, "unit": "images/s"})
    if sizes:
        rows.append(bf16_difference(checkpoint, sorted((workdir / f"images-{sizes[0]}" / "trainA").glob("*.jpg"))))
    translator = Translator(load_generator(checkpoint), pick_device("auto"), use_bf16(precision, pick_device("auto")))
    coarse = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((1024, 1024), Image.BICUBIC))
    whole = translator.translate([pixels])[0]
    translator.tile = tile
    error = np.mean((translator.translate([pixels])[0].astype(np.float64) - whole) ** 2)
    rows.append({"what": f"tiled ({tile}) vs untiled, 1024 px", "psnr_db": 10 * np.log10(255**2 / error) if error else None})
    clip(workdir / "clip.mp4", 256, frames)
    seconds = timed_run(workdir / "clip.mp4", workdir / "clip-out.mp4", checkpoint, precision)
    rows.append({"what": "video, 256 px (H.264 in and out)", "per_s": frames / seconds, "unit": "frames/s"})
    for side in large:
        child = subprocess.run([sys.executable, "-c", LARGE_IMAGE, str(checkpoint), str(side), str(tile), precision],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append({"what": f"one {side} x {side} image, tiles of {tile}", **result})
    return {"machine": machine(), "precision": precision, "rows": rows, "markdown": markdown(rows)}


def bf16_difference(checkpoint: Path, paths: list[Path], repeats: int = 3) -> dict:
    """What `--precision bf16` gains and costs against fp32 (the official output) on `paths`: the
    speed-up of the translation alone, as the median of per-repetition ratios with the two
    interleaved (a shared machine's load then moves both alike), and how far it moves the
    pixels, in levels of 255."""
    device = pick_device("auto")
    generator = load_generator(checkpoint)
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    translators = {low: Translator(generator, device, bf16=low, tile=0) for low in (False, True)}
    outputs, ratios = {}, []
    for _ in range(repeats + 1):  # the first round warms both up, untimed
        seconds = {}
        for low, translator in translators.items():
            start = time.perf_counter()
            outputs[low] = translator.translate(images)
            seconds[low] = time.perf_counter() - start
        ratios.append(seconds[False] / seconds[True])
    diffs = np.concatenate([np.abs(a.astype(np.int16) - b).ravel() for a, b in zip(outputs[False], outputs[True])])
    return {"what": f"bf16 vs fp32, {len(paths)} images", "speedup": float(np.median(ratios[1:])),
            "speedup_runs": ratios[1:], "max_levels": int(diffs.max()), "mean_levels": float(diffs.mean()),
            "share_over_one_level": float((diffs > 1).mean())}


def markdown(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if "max_levels" in row:
            lines.append(f"| {row['what']} | bf16 {row['speedup']:.2f}x as fast; pixels off by max "
                         f"{row['max_levels']}, mean {row['mean_levels']:.2f} levels of 255, "
                         f"{row['share_over_one_level']:.1%} of values by more than one | |")
        elif "psnr_db" in row:
            psnr = "identical" if row["psnr_db"] is None else f"PSNR {row['psnr_db']:.1f} dB"
            lines.append(f"| {row['what']} | {psnr} | |")
        elif "per_s" in row:
            lines.append(f"| {row['what']} | {row['per_s']:.2f} {row['unit']} | |")
        else:
            lines.append(f"| {row['what']} | {row['seconds']:.0f} s | {row['peak_rss_gib']:.2f} GiB peak RSS "
                         f"({row['before_gib']:.2f} GiB before translating), {row['scratch_gib']:.1f} GiB scratch |")
    return lines
