"""The one batched translation core: a generator on a device turning 8-bit images into 8-bit
translations, and deeper data (normalised by `data.normalize`) into data of the input's type.
Files, shards and videos all go through `Translator.translate`; images too big for memory go
through the exact tiled path (`cyclegan.translate.tiles`).

Each image keeps its size: it is reflection-padded to a multiple of 4 (the generator
downsamples twice), translated and cropped back, and the output is `(y + 1) / 2 * 255` cast to
uint8, as the official test code writes it; a deep output is the inverse normalisation, on the
input's window (or, with `full_range`, on its type's full range).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cyclegan.arrays import Normalize, from_unit, is_deep, type_range
from cyclegan.config import run_normalize
from cyclegan.data.transforms import resize
from cyclegan.errors import DataError, UserError
from cyclegan.hardware import native_bf16
from cyclegan.images import normalize, to_image, to_pixels, to_uint8
from cyclegan.models import load_generator
from cyclegan.models.loading import generator_direction, resolve_generator_path
from cyclegan.translate.onnx import OnnxGenerator
from cyclegan.translate.tiles import translate_tiled

DEFAULT_TILE = 512  # pixels; a tile of the paper's generator then needs about 0.5 GB
BYTES_PER_PIXEL_PER_NGF = 16  # untiled forward: peak memory / (pixels x ngf), measured on the CPU
PRECISIONS = ("auto", "fp32", "bf16")
MIN_SIDE = 8  # the innermost layers reflect-pad a quarter of the image by one pixel: two are needed


class ImageTooSmall(DataError):
    """An image the generator cannot take."""


@dataclass
class DeepInput:
    """A deep input normalised for the generator: `unit` (H x W x C float32 in [-1, 1]), and the
    input's values, whose type (and, for percentiles, whose window) its translation goes back to."""

    unit: np.ndarray
    values: np.ndarray

    def resized(self, size: int) -> DeepInput:
        return DeepInput(resize(self.unit, (size, size)), self.values)


def is_hub_id(source: str) -> bool:
    """`owner/name` that is no local path (its first part is no folder here) and no file name."""
    first = source.split("/")[0]
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None and not Path(source).exists()
            and not Path(first).exists() and Path(source).suffix not in (".onnx", ".pth", ".pt", ".safetensors"))


def from_hub(repo: str) -> Path:
    """A Hub model's files, downloaded (or from the local cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo))
    except Exception as err:  # offline, unknown repo, no access
        raise UserError(f"{repo} is no local file or folder, and could not be fetched from the Hugging Face Hub "
                        f"({str(err).splitlines()[0]})") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """`auto`: bf16 where the device does it natively, else fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
    return native_bf16(device) if precision == "auto" else precision == "bf16"


@dataclass
class TranslateReport:
    """What a translation wrote and skipped, mergeable across ranks."""

    written: int = 0
    done_before: int = 0  # outputs a previous, interrupted run had completed
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # inputs that could not be read at all (shards)
    converted: Counter = field(default_factory=Counter)

    def merge(self, other: TranslateReport) -> None:
        self.written += other.written
        self.done_before += other.done_before
        self.skipped += other.skipped
        self.failed += other.failed
        self.converted.update(other.converted)

    def summary(self, output: Path, what: str = "image(s)") -> str:
        lines = [f"translated {self.written} {what} into {output}"]
        if self.done_before:
            lines.append(f"kept {self.done_before} {what} completed by an earlier run")
        if self.converted:
            modes = ", ".join(f"{mode} ({n})" for mode, n in sorted(self.converted.items()))
            lines.append(f"converted to the generator's channels from: {modes}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} item(s) (unreadable, too small, or colour for a greyscale "
                         "generator):")
            lines += [f"  {reason}" for reason in self.skipped]
        if self.failed:
            lines.append(f"could not read {len(self.failed)} input(s); run the command again to retry them:")
            lines += [f"  {reason}" for reason in self.failed]
        return "\n".join(lines)


def _normalizations(source: Path, direction: str, normalize: str | None,
                    normalize_output: str | None) -> tuple[Normalize, Normalize]:
    """The input's and the output's domain's normalisation: as given, else the run's, else dtype
    (the output's defaults to the input's where no run says otherwise)."""
    run = run_normalize(source)
    if run is not None and direction == "BtoA":
        run = run[::-1]
    reading = normalize or (run[0] if run else "dtype")
    writing = normalize_output or (run[1] if run else reading)
    try:
        return Normalize.parse(reading), Normalize.parse(writing)
    except DataError as err:
        raise UserError(f"normalize: {err}") from None


class Translator:
    """A generator on a device, turning images into translations:

        translator = Translator.from_pretrained("runs/h2z/export", direction="AtoB")
        zebra = translator(Image.open("horse.jpg"))   # PIL in, PIL out, own size kept
        batch = translator(tensor)                     # or [-1, 1] NCHW tensors

    `tile`: None decides per image (tiles when the untiled forward would not fit in half the free
    memory), 0 never tiles, N tiles of N pixels."""

    def __init__(self, net: nn.Module, device: torch.device, bf16: bool = False, tile: int | None = None,
                 direction: str = "AtoB", normalize: Normalize = Normalize(), full_range: bool = False,
                 deep_bf16: bool = False, output_normalize: Normalize | None = None) -> None:
        self.net, self.device, self.bf16, self.tile = net.eval().to(device), device, bf16, tile
        self.direction, self.normalize, self.full_range = direction, normalize, full_range
        self.output_normalize = output_normalize or normalize  # the output domain's
        self.deep_bf16 = deep_bf16  # bf16 keeps 8 bits of mantissa: deep data only when asked for

    def deep_input(self, array: np.ndarray, name: str = "input") -> DeepInput:
        """An H x W x C array of the generator's input bands, normalised by `self.normalize`."""
        return DeepInput(self.normalize.to_unit(array, name), array)

    def output_dtype(self, dtype: np.dtype) -> np.dtype:
        """The type a translation of `dtype` input is written in: the input's, unless the output
        domain's fixed window does not fit in it (MR in uint16 to CT in Hounsfield units, say):
        then float32."""
        dtype = np.dtype(dtype)
        norm = self.output_normalize
        if self.full_range or norm.kind != "range" or not np.issubdtype(dtype, np.integer):
            return dtype
        info = np.iinfo(dtype)
        return dtype if info.min <= norm.low and norm.high <= info.max else np.dtype(np.float32)

    def restore(self, translated: np.ndarray, source: DeepInput) -> np.ndarray:
        """A float32 [-1, 1] translation -> values of `output_dtype`, by the inverse of the output
        domain's normalisation (its fixed window, the type's range, or the input's percentiles),
        or with `full_range` on the type's whole range."""
        dtype = self.output_dtype(source.values.dtype)
        integer = np.issubdtype(dtype, np.integer)
        if self.full_range and not integer:
            raise UserError(f"--output-range dtype spreads outputs over an integer type's range; {dtype} data "
                            "has none: leave --output-range at window")
        if not self.full_range and self.output_normalize.is_default and not integer:
            raise UserError(f"{dtype} input, and the output domain's normalisation is dtype, which has no range for "
                            "float data: give --normalize-output range:LO,HI or percentile:P1,P99")
        window = type_range(dtype) if self.full_range else self.output_normalize.window(source.values, "the input")
        return from_unit(translated, dtype, window)

    @classmethod
    def from_pretrained(cls, source: str | Path, direction: str | None = None, device: str | torch.device = "auto",
                        precision: str = "auto", tile: int | None = None, normalize: str | None = None,
                        normalize_output: str | None = None, full_range: bool = False) -> Translator:
        """From a run, export, checkpoint or official folder (`direction` picks the generator, AtoB
        by default), a Hugging Face folder or Hub id, an official `.pth`, a `.safetensors` export,
        or an `.onnx` model (run by onnxruntime on the CPU). A file or folder that says it
        translates the other way than `direction` is refused. `normalize` and `normalize_output`
        (as `data.normalize`, for the input's and the output's domain; None: the run's settings
        when `source` is in a run folder, else "dtype") and `full_range` say how deep inputs are
        read and their translations written."""
        path = Path(source)
        if is_hub_id(str(source)):
            path = from_hub(str(source))
        if path.suffix == ".onnx":
            if tile:
                raise UserError("tiled translation needs the PyTorch generator, not its ONNX export")
            net = OnnxGenerator(path)
            if direction and net.direction and direction != net.direction:
                raise UserError(f"{path} holds the {net.direction} generator, but {direction} was asked for")
            named = net.direction or direction or "AtoB"
            reading, writing = _normalizations(path, named, normalize, normalize_output)
            return cls(net, torch.device("cpu"), tile=0, direction=named, normalize=reading, full_range=full_range,
                       output_normalize=writing)
        dev = device if isinstance(device, torch.device) else pick_device(device)
        weights = resolve_generator_path(path, direction)
        named = direction or generator_direction(path if path.is_dir() else weights) or "AtoB"
        reading, writing = _normalizations(path, named, normalize, normalize_output)
        return cls(load_generator(weights), dev, use_bf16(precision, dev), tile, named, reading, full_range,
                   precision == "bf16", writing)

    def __call__(self, images: Image.Image | np.ndarray | torch.Tensor) -> Image.Image | np.ndarray | torch.Tensor:
        """A PIL image -> its translation as a PIL image of the same size (tiled if need be); an
        H x W x C (or H x W) array of any type -> the translated array of that type (normalised
        and restored as `deep_input` and `restore` do); a [-1, 1] CHW or NCHW tensor -> the
        translated tensor, on the same device."""
        if isinstance(images, Image.Image):
            return to_image(self.translate([to_pixels(images, self.in_channels)])[0])
        if isinstance(images, np.ndarray):
            array = images[:, :, None] if images.ndim == 2 else images
            if array.ndim != 3 or array.shape[2] != self.in_channels:
                raise UserError(f"this generator takes H x W x {self.in_channels} arrays, not {images.shape}")
            if array.dtype == np.uint8 and not is_deep(None, self.normalize, self.in_channels, self.out_channels):
                out = self.translate([array])[0]  # the official 8-bit arithmetic, as for PIL images
            else:
                deep = self.deep_input(array)
                out = self.restore(self.translate([deep.unit])[0], deep)
            return out[:, :, 0] if images.ndim == 2 and out.shape[2] == 1 else out
        if isinstance(images, torch.Tensor):
            if not images.is_floating_point() or images.dim() not in (3, 4):
                raise UserError("a Translator takes float tensors in [-1, 1], CHW or NCHW")
            if images.shape[-3] != self.in_channels:
                raise UserError(f"this generator takes {self.in_channels}-channel images, not {images.shape[-3]}")
            if min(images.shape[-2:]) < MIN_SIDE:
                raise ImageTooSmall(f"{images.shape[-1]} x {images.shape[-2]} px is too small to translate")
            single = images.dim() == 3
            out = self.forward((images[None] if single else images).to(self.device)).to(images.device)
            return out[0] if single else out
        raise TypeError(f"a Translator takes a PIL image or a tensor, not {type(images).__name__}")

    @property
    def in_channels(self) -> int:
        """The generator's input channels (3: RGB, 1: greyscale, or any band count); inputs are
        converted to them."""
        return self.net.spec.in_channels

    @property
    def out_channels(self) -> int:
        return self.net.spec.out_channels

    def untiled_bytes(self, height: int, width: int) -> int:
        return height * width * self.net.spec.ngf * BYTES_PER_PIXEL_PER_NGF

    def free_bytes(self) -> int:
        """Memory this process can still take: on a GPU counting PyTorch's cached blocks, on the CPU
        within the container's (cgroup's) limit too."""
        if self.device.type == "cuda":
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return torch.cuda.mem_get_info(self.device)[0] + cached
        free = psutil.virtual_memory().available
        limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
        if limit.is_file() and used.is_file() and limit.read_text().strip() != "max":
            free = min(free, int(limit.read_text()) - int(used.read_text()))
        return free

    def tile_for(self, height: int, width: int) -> int:
        """The tile size for images of this size; 0: untiled."""
        if self.tile is not None:
            return self.tile
        return DEFAULT_TILE if self.untiled_bytes(height, width) > self.free_bytes() // 2 else 0

    def translate(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """H x W x C images of one size -> their translations: 8-bit to 8-bit, or float32 in
        [-1, 1] (deeper data, normalised) to float32 in [-1, 1]."""
        height, width = images[0].shape[:2]
        if min(height, width) < MIN_SIDE:
            raise ImageTooSmall(f"{width} x {height} px is too small to translate (both sides need {MIN_SIDE} px)")
        tile = self.tile_for(height, width)
        bf16 = self.bf16 if images[0].dtype == np.uint8 else self.deep_bf16
        if tile:
            return [translate_tiled(self.net, image, tile, self.device, bf16) for image in images]
        per_pass = max(1, self.free_bytes() // 2 // self.untiled_bytes(height, width))
        out = []
        for start in range(0, len(images), per_pass):
            batch = torch.from_numpy(np.stack(images[start:start + per_pass])).to(self.device).permute(0, 3, 1, 2)
            if batch.dtype == torch.uint8:
                out += list(to_uint8(self.forward(normalize(batch))).permute(0, 2, 3, 1).cpu().numpy())
            else:
                out += list(self.forward(batch.float(), bf16).permute(0, 2, 3, 1).cpu().numpy())
        return out

    @torch.no_grad()
    def forward(self, images: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
        """[-1, 1] NCHW of any size -> translated [-1, 1] NCHW (float32) of the same size (in bf16
        by `self.bf16` unless `bf16` says otherwise)."""
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % 4, -width % 4
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16 if bf16 is None else bf16):
            out = self.net(images)
        return out[..., :height, :width].float()
