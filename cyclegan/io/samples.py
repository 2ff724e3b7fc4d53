"""The one door between stored samples and the networks: `read_sample` turns a sample (an image
or `.npy` file, a tar member, a PIL image, a numpy array) and its domain's settings into the
network's input, and `restore` turns a translation back into what is stored. Training,
evaluation, translation of files, shards and videos, and the `Translator` API all call them, so
a setting such as `data.normalize` means the same on every path.

A sample takes one of two paths. 8-bit greyscale and colour images under the default
normalisation keep the official one: a PIL image of the domain's bands (resized by PIL, sent to
the device as uint8 and normalised there by `cyclegan.images.normalize`, ToTensor/Normalize
arithmetic), whose translation is cast to uint8 as the official test code does. Everything else
(16-bit and float images, `.npy` arrays, band counts no image has, a `range:` or `percentile:`
normalisation, or any sample of a domain that holds deeper ones) is read at its own depth,
normalised into [-1, 1] as float32, and its translation goes back to the stored type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.data.normalize import Normalize, from_unit, type_range
from cyclegan.data.transforms import resize
from cyclegan.errors import DataError, UserError
from cyclegan.images import (
    ARRAY_EXTENSIONS,
    HIGH_DEPTH_MODES,
    ImageDecodeError,
    band_mismatch,
    hwc_array,
    is_grey,
    luma,
    normalize,
    to_channels,
    to_image,
    to_uint8_tensor,
    upright,
)
from cyclegan.io.formats import checked, image_array, open_sample, probe

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "npy")  # tar members that hold a sample
NPY_MAGIC = b"\x93NUMPY"
Source = Path | bytes | dict | Image.Image | np.ndarray


@dataclass(frozen=True)
class Decoding:
    """How one domain's samples become network inputs: `channels` bands, normalised by
    `normalize`; `deep` puts every sample on the deep path, 8-bit ones too (a domain whose
    manifest or folder holds deeper samples, so that all its samples are read alike);
    `out_channels`, in translation, the bands the generator gives back; `setting`, how the caller
    named `normalize` (`data.normalize`, `--normalize`, `normalize=`), for messages."""

    channels: int = 3
    normalize: Normalize = Normalize()
    deep: bool = False
    out_channels: int | None = None
    setting: str = "data.normalize"

    @classmethod
    def of(cls, channels: int, normalize: str | Normalize, deep: bool = False, **more) -> Decoding:
        return cls(channels, normalize if isinstance(normalize, Normalize) else Normalize.parse(normalize), deep, **more)

    @property
    def all_deep(self) -> bool:
        """Whether every sample takes the deep path: the domain says so, its normalisation is not
        the 8-bit default, or a band count (in or out) is one no image file has."""
        bands = (self.channels, self.out_channels or self.channels)
        return self.deep or not self.normalize.is_default or any(b not in (1, 3) for b in bands)

    def takes_deep(self, stored_deep: bool) -> bool:
        """The path of a sample whose stored form is (or is not) deeper than 8 bits."""
        return stored_deep or self.all_deep


def domain_decoding(channels: int, normalize: str | Normalize, deep_samples: Iterable[bool] = (),
                    **more) -> Decoding:
    """How every sample of one domain is read, decided once for the domain, so that a sample gives
    the same network input (and its translation the same stored type) whether it is trained on,
    evaluated or translated, from files or from shards: all on the deep path when any of its
    stored samples is deeper than 8 bits, or when the settings ask for it (`Decoding.all_deep`);
    else all on the official 8-bit path. `deep_samples`: what is known of the stored samples, a
    flag each (stops at the first True): the manifest's (`manifest_deep`), or the headers of the
    listed files or tar members (`stored_deep`). `more`: the other `Decoding` fields. A lone image,
    which has no domain (the `Translator` API), is decided by itself (`Decoding.takes_deep`)."""
    return Decoding.of(channels, normalize, deep=any(deep_samples), **more)


def manifest_deep(dtypes: dict[str, int] | None, array_bands: dict[str, int] | None) -> bool:
    """Whether a manifest entry's `dtypes` and `array_bands` list samples other than 8-bit images."""
    return bool(array_bands) or any(dtype != "uint8" for dtype in dtypes or {})


def stored_deep(source: Path | dict) -> bool:
    """Whether a file or a tar sample is stored deeper than 8 bits, by its header alone; False for
    one that cannot be read, which is reported (or skipped) where it is decoded."""
    try:
        if isinstance(source, dict):
            field, label = sample_field(source)
            return field == "npy" or probe(source[field], label).deep
        return probe(source).deep
    except ImageDecodeError:
        return False


@dataclass(frozen=True)
class Sample:
    """A decoded sample: `pixels`, an 8-bit PIL image of the domain's bands (official path) or an
    H x W x C float32 array in [-1, 1] (deep path); `values`, for a deep sample, the stored values
    whose type (and, for percentiles, window) its translation goes back to; `converted`, the
    Pillow mode an image was converted from to give the domain's bands (None: none)."""

    pixels: Image.Image | np.ndarray
    values: np.ndarray | None = None
    converted: str | None = None

    @property
    def deep(self) -> bool:
        return self.values is not None

    def array(self) -> np.ndarray:
        """The network input as H x W x C: uint8 (official path) or float32 in [-1, 1]."""
        return self.pixels if self.deep else hwc_array(self.pixels)

    def resized(self, size: tuple[int, int]) -> Sample:
        """Resized to (width, height), bicubic, as the test preprocessing resizes either kind."""
        return replace(self, pixels=resize(self.pixels, size))


def sample_field(sample: dict) -> tuple[str, str]:
    """The tar member holding a sample's image or array, and a name for messages (key and shard)."""
    name = f"sample {sample.get('__key__')} in {sample.get('__url__')}"
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        raise ImageDecodeError(f"{name} has no image (fields: {', '.join(k for k in sample if not k.startswith('__'))})")
    return field, name


def _open(source: Source, name: str | None, draft: tuple[int, int] | None) -> tuple[Image.Image | np.ndarray, str, bool]:
    """(the sample as a PIL image or an H x W x C array at its own depth, its name, whether image
    rules apply to its bands: grey and colour convert into each other, unlike a `.npy` file's)."""
    if isinstance(source, dict):
        field, label = sample_field(source)
        return open_sample(source[field], label, field == "npy", draft), label, field != "npy"
    if isinstance(source, Path):
        is_npy = source.suffix.lower() in ARRAY_EXTENSIONS
        return open_sample(source, name or str(source), is_npy, draft), name or str(source), not is_npy
    if isinstance(source, bytes):
        is_npy = source.startswith(NPY_MAGIC)
        return open_sample(source, name or "sample", is_npy, draft), name or "sample", not is_npy
    label = name or "input"
    if isinstance(source, Image.Image):
        return upright(source.copy()), label, True
    if not isinstance(source, np.ndarray) or source.ndim not in (2, 3):
        raise DataError(f"{label}: a sample is a PIL image or an H x W (x C) array, not "
                        f"{getattr(source, 'shape', type(source).__name__)}")
    array = checked(source[:, :, None] if source.ndim == 2 else source, label)
    return (to_image(array) if array.dtype == np.uint8 and array.shape[2] in (1, 3) else array), label, True


def read_sample(source: Source, decoding: Decoding = Decoding(), name: str | None = None,
                draft: tuple[int, int] | None = None) -> Sample:
    """A stored sample as its domain's network input (see the module's docstring for the two
    paths). `draft` lets an 8-bit JPEG decode at a reduced scale no smaller than it. Raises
    ImageDecodeError for what cannot be read, ChannelMismatch for bands the domain cannot take."""
    opened, label, image_rules = _open(source, name, None if decoding.all_deep else draft)
    deep_stored = isinstance(opened, np.ndarray) or opened.mode in HIGH_DEPTH_MODES
    if not decoding.takes_deep(deep_stored):
        image = to_channels(opened, decoding.channels, label)
        return Sample(image, converted=opened.mode if opened.mode != image.mode else None)
    array = opened if isinstance(opened, np.ndarray) else image_array(opened, label)
    values = fit_bands(array, decoding.channels, label, image_rules)
    # an 8-bit image of a deep domain is converted as the official path would report it: where its
    # mode is not the plain one of the bands it gave (a palette, alpha, grey into colour or back)
    converted = not deep_stored and opened.mode != {1: "L", 3: "RGB"}.get(values.shape[2])
    return Sample(decoding.normalize.to_unit(values, label, decoding.setting), values,
                  opened.mode if converted else None)


def fit_bands(array: np.ndarray, channels: int, name: str, from_image: bool) -> np.ndarray:
    """The sample with the domain's `channels` bands, by the rule of `cyclegan.images.to_channels`
    for images: grey repeats into 3 channels, grey saved as RGB becomes its luma (for 8-bit data
    what the official path takes); `.npy` arrays must have exactly `channels`."""
    bands = array.shape[2]
    if bands == channels:
        return array
    if from_image and channels == 3 and bands == 1:
        return np.repeat(array, 3, axis=2)
    if from_image and channels == 1 and bands == 3 and is_grey(array):
        return luma(array)
    raise band_mismatch(name, bands, channels, from_image)


def as_tensor(pixels: Image.Image | np.ndarray) -> torch.Tensor:
    """Decoded (and transformed) pixels as CHW: uint8 for an 8-bit image, a quarter of the bytes
    between processes, normalised on the device; float32 in [-1, 1] for deep ones."""
    if isinstance(pixels, Image.Image):
        return to_uint8_tensor(pixels)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def as_unit(tensor: torch.Tensor) -> torch.Tensor:
    """Network input of either path (`as_tensor`, or `Sample.array` as a tensor, in any layout) as
    [-1, 1] floats of torch's default dtype: uint8 normalised with the official arithmetic
    (`cyclegan.images.normalize`), a deep sample's floats, already in [-1, 1], cast. Training,
    evaluation, translation and tiles all decide here."""
    return normalize(tensor) if tensor.dtype == torch.uint8 else tensor.to(torch.get_default_dtype())


def to_unit_tensor(pixels: Image.Image | np.ndarray) -> torch.Tensor:
    """Decoded pixels as a CHW tensor in [-1, 1] of torch's default dtype."""
    return as_unit(as_tensor(pixels))


@dataclass(frozen=True)
class Output:
    """How translations are stored: by the output domain's `normalize` (on the input's values for
    percentiles), or with `full_range` spread over the type's whole range. `names` say how the
    caller set these two, for messages (`--normalize-output` or `normalize_output=`, ...)."""

    normalize: Normalize = Normalize()
    full_range: bool = False
    names: tuple[str, str] = ("--normalize-output", "--output-range dtype")

    def dtype(self, dtype: np.dtype) -> np.dtype:
        """The type a translation of `dtype` input is stored in: the input's, unless the output
        domain's fixed window does not fit in it (MR in uint16 to CT in Hounsfield units, say):
        then float32."""
        dtype, norm = np.dtype(dtype), self.normalize
        if self.full_range or norm.kind != "range" or not np.issubdtype(dtype, np.integer):
            return dtype
        info = np.iinfo(dtype)
        return dtype if info.min <= norm.low and norm.high <= info.max else np.dtype(np.float32)


def restore(translated: np.ndarray, sample: Sample, output: Output = Output()) -> np.ndarray:
    """A translation back to what is stored, H x W x C: an 8-bit sample's is already uint8 (cast on
    the device as the official code does: `cyclegan.images.to_uint8`); a deep sample's float32
    [-1, 1] goes through the inverse of the output domain's normalisation into `Output.dtype`."""
    if not sample.deep:
        return translated
    dtype = output.dtype(sample.values.dtype)
    integer = np.issubdtype(dtype, np.integer)
    normalize_name, range_name = output.names
    if output.full_range and not integer:
        raise UserError(f"{range_name} spreads outputs over an integer type's range; {dtype} data has none: "
                        "leave it out")
    if not output.full_range and output.normalize.is_default and not integer:
        raise UserError(f"{dtype} input, and the output domain's normalisation is dtype, which has no range for "
                        f"float data: give {normalize_name} range:LO,HI or percentile:P1,P99")
    window = type_range(dtype) if output.full_range else output.normalize.window(sample.values, "the input")
    return from_unit(translated, dtype, window)


def as_pil(restored: np.ndarray) -> Image.Image:
    """A restored translation of a PIL image as a PIL image of its bands: 1 or 3 bands of uint8, or
    1 band of uint16 or float32; a UserError naming the way out for what no PIL image holds."""
    dtype, bands = restored.dtype, restored.shape[2]
    if (dtype == np.uint8 and bands in (1, 3)) or (dtype in (np.uint16, np.float32) and bands == 1):
        return to_image(restored)
    raise UserError(f"input: its translation is {bands} band(s) of {dtype}, which no PIL image holds: pass the "
                    "image as a numpy array (numpy.asarray(image)) to get the translation back as one")
