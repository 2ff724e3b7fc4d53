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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cyclegan.config import run_normalize
from cyclegan.data.normalize import Normalize
from cyclegan.errors import DataError, UserError
from cyclegan.hardware import native_bf16
from cyclegan.images import to_uint8
from cyclegan.memory import free_bytes
from cyclegan.io.samples import Decoding, Output, Sample, as_pil, as_unit, domain_decoding, read_sample, restore
from cyclegan.models import load_generator
from cyclegan.models.loading import generator_direction, resolve_generator_path
from cyclegan.translate.onnx import OnnxGenerator
from cyclegan.translate.tiles import translate_tiled

DEFAULT_TILE = 512  # pixels; a tile of the paper's generator then needs about 0.5 GB
# untiled forward: peak memory / (pixels x ngf), by GeneratorSpec.antialias (the anti-aliased layout
# convolves to 2 ngf channels at full size before each blur). Measured as the growth of peak RSS over
# the first `translate` of one 8-bit image in a fresh process (fp32, CPU, 1 thread, ngf 64, 9 blocks),
# the largest at 256, 384 and 512 px: 21.4 and 34.6 (docs/translation.md); set above. The wider
# margin is the caller's: an untiled translation must fit in half the free memory (GPUs unmeasured)
BYTES_PER_PIXEL_PER_NGF = {False: 24, True: 36}
PRECISIONS = ("auto", "fp32", "bf16")
MIN_SIDE = 8  # the innermost layers reflect-pad a quarter of the image by one pixel: two are needed
TENSOR_SLACK = 1e-3  # how far outside [-1, 1] a tensor's values may stray (rounding of a caller's normalisation)
# how a caller names the settings, for messages: the Python API's parameters, or the command line's flags
API_NAMES = {"normalize": "normalize", "normalize_output": "normalize_output", "full_range": "full_range=True",
             "precision": "precision"}
CLI_NAMES = {"normalize": "--normalize", "normalize_output": "--normalize-output", "full_range": "--output-range dtype",
             "precision": "--precision"}


class ImageTooSmall(DataError):
    """An image the generator cannot take."""


def check_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of an image the generator can take; ImageTooSmall otherwise."""
    if min(height, width) < MIN_SIDE:
        raise ImageTooSmall(f"{width} x {height} px is too small to translate (both sides need {MIN_SIDE} px)")
    return height, width


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


def use_bf16(precision: str, device: torch.device, name: str = "precision") -> bool:
    """`fp32` (the default: the official pixels on every machine), `bf16`, or `auto`: bf16 where
    the device computes it natively, else fp32 (faster there, but other pixels on other machines).
    `name`: how the caller spells the setting, for the message (`--precision` on the command line)."""
    if precision not in PRECISIONS:
        raise UserError(f"{name} must be one of {', '.join(PRECISIONS)}, not {precision!r}")
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


def _normalizations(source: Path, direction: str, normalize: str | None, normalize_output: str | None,
                    names: dict[str, str] = API_NAMES) -> tuple[Normalize, Normalize]:
    """The input's and the output's domain's normalisation: as given, else the run's, else dtype
    (the output's defaults to the input's where no run says otherwise)."""
    run = run_normalize(source)
    if run is not None and direction == "BtoA":
        run = run[::-1]
    reading = normalize or (run[0] if run else "dtype")
    writing = normalize_output or (run[1] if run else reading)
    parsed = []
    for key, spec in (("normalize", reading), ("normalize_output", writing)):
        try:
            parsed.append(Normalize.parse(spec))
        except DataError as err:
            raise UserError(f"{names[key]}: {err}") from None
    return parsed[0], parsed[1]


class Translator:
    """A generator on a device, turning images into translations:

        translator = Translator.from_pretrained("runs/h2z/export", direction="AtoB")
        zebra = translator(Image.open("horse.jpg"))   # PIL in, PIL out, own size kept
        batch = translator(tensor)                     # or [-1, 1] NCHW tensors

    `tile`: None decides per image (tiles when the untiled forward would not fit in half the free
    memory), 0 never tiles, N tiles of N pixels."""

    def __init__(self, net: nn.Module, device: torch.device, bf16: bool = False, tile: int | None = None,
                 direction: str = "AtoB", normalize: Normalize = Normalize(), full_range: bool = False,
                 deep_bf16: bool = False, output_normalize: Normalize | None = None,
                 names: dict[str, str] = API_NAMES) -> None:
        self.net, self.device, self.bf16, self.tile = net.eval().to(device), device, bf16, tile
        self.direction, self.normalize, self.full_range = direction, normalize, full_range
        self.output_normalize = output_normalize or normalize  # the output domain's
        self.deep_bf16 = deep_bf16  # bf16 keeps 8 bits of mantissa: deep data only when asked for
        self.setting = names["normalize"]
        self.decoding = self.domain()  # for a lone input: its own depth decides
        self.output = Output(self.output_normalize, full_range, (names["normalize_output"], names["full_range"]))

    def domain(self, deep_samples: Iterable[bool] = ()) -> Decoding:
        """How this generator reads every input of one set (a folder, shards), as training and
        evaluation read that domain: see `cyclegan.io.samples.domain_decoding`."""
        return domain_decoding(self.in_channels, self.normalize, deep_samples, out_channels=self.out_channels,
                               setting=self.setting)

    def read(self, source: Path | bytes | dict | Image.Image | np.ndarray, name: str | None = None,
             decoding: Decoding | None = None) -> Sample:
        """A stored sample as this generator's input (`cyclegan.io.samples.read_sample`), read as
        its set is (`decoding`, from `domain`) or, alone, by its own depth."""
        return read_sample(source, decoding or self.decoding, name)

    @classmethod
    def from_pretrained(cls, source: str | Path, direction: str | None = None, device: str | torch.device = "auto",
                        precision: str = "fp32", tile: int | None = None, normalize: str | None = None,
                        normalize_output: str | None = None, full_range: bool = False,
                        names: dict[str, str] = API_NAMES) -> Translator:
        """From a run, export, checkpoint or official folder (`direction` picks the generator, AtoB
        by default; a CUT model's, official CUT files too, translates A -> B only and refuses BtoA), a
        Hugging Face folder or Hub id, an official `.pth`, a `.safetensors` export, or an `.onnx`
        model (run by onnxruntime on the CPU). A file or folder that says it translates the other
        way than `direction` is refused. `normalize` and `normalize_output`
        (as `data.normalize`, for the input's and the output's domain; None: the run's settings
        when `source` is in a run folder, else "dtype") and `full_range` say how deep inputs are
        read and their translations written; `names`, how the caller spells them in messages (the
        API's parameters; the command line passes `CLI_NAMES`). `precision` is fp32 unless asked otherwise (see
        `use_bf16`): the same pixels as the official code on every machine."""
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
            reading, writing = _normalizations(path, named, normalize, normalize_output, names)
            return cls(net, torch.device("cpu"), tile=0, direction=named, normalize=reading, full_range=full_range,
                       output_normalize=writing, names=names)
        dev = device if isinstance(device, torch.device) else pick_device(device)
        weights = resolve_generator_path(path, direction)
        named = direction or generator_direction(path if path.is_dir() else weights) or "AtoB"
        reading, writing = _normalizations(path, named, normalize, normalize_output, names)
        bf16 = use_bf16(precision, dev, names["precision"])
        return cls(load_generator(weights), dev, bf16, tile, named, reading, full_range, precision == "bf16", writing,
                   names)

    def __call__(self, images: Image.Image | np.ndarray | torch.Tensor) -> Image.Image | np.ndarray | torch.Tensor:
        """A PIL image -> its translation as a PIL image of the same size (tiled if need be); an
        H x W x C (or H x W) array -> the translated array. Both are read as `cyclegan-translate`
        reads a file of theirs (`read`: the same normalisation, band conversion and checks) and
        restored as it writes one (`cyclegan.io.samples.restore`): in the input's type for uint8,
        uint16, int16 and float32; float32 for the types read as float32 (float16, float64, 32-bit
        integers), and where the output domain's `range:` window does not fit the input's type; a
        translation no PIL image holds is refused for a PIL input (`as_pil`). A [-1, 1] CHW or NCHW
        tensor of any float type -> the translated tensor, of its type and on its device."""
        if isinstance(images, (Image.Image, np.ndarray)):
            sample = self.read(images)
            out = restore(self.translate([sample.array()])[0], sample, self.output)
            if isinstance(images, Image.Image):
                return as_pil(out)
            return out[:, :, 0] if images.ndim == 2 and out.shape[2] == 1 else out
        if isinstance(images, torch.Tensor):
            return self._translate_tensor(images)
        raise TypeError(f"a Translator takes a PIL image, a numpy array or a tensor, not {type(images).__name__}")

    def _translate_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Tensors checked and tiled as every other input; untiled, translated on their own device."""
        if not images.is_floating_point() or images.dim() not in (3, 4):
            raise UserError("a Translator takes float tensors in [-1, 1], CHW or NCHW")
        if images.shape[-3] != self.in_channels:
            raise UserError(f"this generator takes {self.in_channels}-channel images, not {images.shape[-3]}")
        batch = (images[None] if images.dim() == 3 else images).float()
        if not torch.isfinite(batch).all():
            raise DataError("input: holds NaN or infinite values")
        if batch.numel() and batch.abs().max() > 1 + TENSOR_SLACK:
            raise UserError(f"input: tensors hold the networks' values in [-1, 1], not {batch.min():.4g} .. "
                            f"{batch.max():.4g}: normalise them, or pass a PIL image or a numpy array")
        height, width = batch.shape[-2:]
        if self.tile_for(*check_size(height, width)):  # the tiled path works on host arrays
            arrays = list(batch.permute(0, 2, 3, 1).cpu().numpy())
            out = torch.from_numpy(np.stack(self.translate(arrays, self.bf16))).permute(0, 3, 1, 2)
        else:  # on the tensor's device, without a round trip through the host
            out = torch.cat([self.forward(as_unit(part.to(self.device)), self.bf16)
                             for part in batch.split(self.per_pass(height, width))])
        out = out.to(images.device, images.dtype)
        return out[0] if images.dim() == 3 else out

    @property
    def in_channels(self) -> int:
        """The generator's input channels (3: RGB, 1: greyscale, or any band count); inputs are
        converted to them."""
        return self.net.spec.in_channels

    @property
    def out_channels(self) -> int:
        return self.net.spec.out_channels

    def untiled_bytes(self, height: int, width: int) -> int:
        return height * width * self.net.spec.ngf * BYTES_PER_PIXEL_PER_NGF[self.net.spec.antialias]

    def per_pass(self, height: int, width: int) -> int:
        """How many images of this size one untiled forward pass takes: what half the free memory holds."""
        return max(1, self.free_bytes() // 2 // self.untiled_bytes(height, width))

    def free_bytes(self) -> int:
        """Memory this process can still take on the translator's device."""
        return free_bytes(self.device)

    def tile_for(self, height: int, width: int) -> int:
        """The tile size for images of this size; 0: untiled."""
        if self.tile is not None:
            return self.tile
        return DEFAULT_TILE if self.untiled_bytes(height, width) > self.free_bytes() // 2 else 0

    def translate(self, images: list[np.ndarray], bf16: bool | None = None) -> list[np.ndarray]:
        """Network inputs of one size (`Sample.array`) -> their translations: 8-bit to 8-bit, or
        float32 in [-1, 1] (deeper data, normalised) to float32 in [-1, 1]; in bf16 as `bf16` says,
        else as the precision asked for the kind of data."""
        height, width = check_size(*images[0].shape[:2])
        tile = self.tile_for(height, width)
        eight_bit = images[0].dtype == np.uint8
        if bf16 is None:
            bf16 = self.bf16 if eight_bit else self.deep_bf16
        if tile:
            return [translate_tiled(self.net, image, tile, self.device, bf16) for image in images]
        per_pass, out = self.per_pass(height, width), []
        for start in range(0, len(images), per_pass):
            batch = torch.from_numpy(np.stack(images[start:start + per_pass])).to(self.device).permute(0, 3, 1, 2)
            translated = self.forward(as_unit(batch), bf16)
            out += list((to_uint8(translated) if eight_bit else translated).permute(0, 2, 3, 1).cpu().numpy())
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
