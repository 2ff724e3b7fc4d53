"""Translate image files with a trained or official generator.

By default each image keeps its own size: it is reflection-padded to a multiple of 4 (the
generator downsamples twice), translated and cropped back. `load_size` instead resizes to a
square with bicubic filtering, exactly as the official `test.py`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cyclegan.errors import DataError, UserError
from cyclegan.images import ImageDecodeError, list_images, open_image, to_rgb, to_tensor, to_uint8
from cyclegan.models import load_generator


@dataclass
class TranslateReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    converted: Counter = field(default_factory=Counter)

    def summary(self, output: Path) -> str:
        lines = [f"translated {len(self.written)} image(s) into {output}"]
        if self.converted:
            modes = ", ".join(f"{mode} ({n})" for mode, n in sorted(self.converted.items()))
            lines.append(f"converted to RGB from: {modes}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s):")
            lines += [f"  {reason}" for reason in self.skipped]
        return "\n".join(lines)


def output_name(relative: Path, stems: Counter) -> Path:
    """`x.jpg` -> `x.png`; but when `x.jpg` and `x.png` are both inputs, `x.jpg` -> `x.jpg.png`."""
    if stems[relative.with_suffix("")] > 1 and relative.suffix.lower() != ".png":
        return relative.with_name(relative.name + ".png")
    return relative.with_suffix(".png")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def translate_batch(net: torch.nn.Module, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """[-1, 1] NCHW of any size -> translated [-1, 1] NCHW of the same size."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % 4, -width % 4
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(images)
    return out[..., :height, :width].float()


def translate_files(
    checkpoint: Path,
    source: Path,
    output: Path,
    load_size: int | None = None,
    batch_size: int = 4,
    device: str = "auto",
    bf16: bool = False,
    direction: str = "AtoB",
) -> TranslateReport:
    """Translate `source` (an image or a folder, recursively) into PNGs under `output`."""
    dev = pick_device(device)
    if bf16 and dev.type != "cuda":
        raise UserError("--bf16 needs a CUDA device")
    net = load_generator(checkpoint, direction=direction).to(dev)
    if source.is_file():
        files, root = [source], source.parent
    elif source.is_dir():
        files, root = list_images(source), source
    else:
        raise DataError(f"input {source} does not exist")
    if not files:
        raise DataError(f"no images found under {source}")
    report = TranslateReport()
    stems = Counter(p.relative_to(root).with_suffix("") for p in files)
    groups: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for path in files:
        try:
            with Image.open(path) as image:
                size = image.size
        except Exception as err:  # PIL raises many kinds for a bad header
            report.skipped.append(f"{path}: cannot be opened ({err})")
            continue
        groups[(load_size, load_size) if load_size else size].append(path)
    progress = tqdm(total=sum(len(g) for g in groups.values()), desc="translate", unit="img")
    for size, paths in sorted(groups.items()):
        for start in range(0, len(paths), batch_size):
            batch, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    image, mode = to_rgb(open_image(path))
                except ImageDecodeError as err:
                    report.skipped.append(str(err))
                    continue
                if mode:
                    report.converted[mode] += 1
                if load_size:
                    image = image.resize((load_size, load_size), Image.BICUBIC)
                batch.append(to_tensor(image))
                names.append(path)
            if batch:
                result = to_uint8(translate_batch(net, torch.stack(batch).to(dev), bf16)).cpu()
                for path, pixels in zip(names, result):
                    target = output / output_name(path.relative_to(root), stems)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(target)
                    report.written.append(target)
            progress.update(len(paths[start : start + batch_size]))
    progress.close()
    return report
