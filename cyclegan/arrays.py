"""Samples of any depth and band count: 16-bit and float images and `.npy` arrays as H x W x C
arrays, `data.normalize` into the networks' [-1, 1] and its inverse back to the input's type.

8-bit greyscale and RGB data keep the official path (`cyclegan.images`: PIL, then
ToTensor/Normalize arithmetic). Everything else (16-bit PNG/TIFF, float TIFF, arrays of any
band count, or any data with a `range:` or `percentile:` normalisation) goes through here.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cyclegan.errors import DataError
from cyclegan.images import GREY_TOLERANCE, HIGH_DEPTH_MODES, ChannelMismatch, ImageDecodeError, open_image, to_rgb

ARRAY_DTYPES = ("uint8", "uint16", "int16", "float32")  # what `.npy` and TIFF samples may hold
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, either byte order
NORMALIZE_FORMS = "dtype, range:LO,HI or percentile:P1,P99"


@dataclass(frozen=True)
class Normalize:
    """How a sample's values map onto [-1, 1]: the full range of its integer type (`dtype`), a
    fixed window (`range`, e.g. CT Hounsfield units -1000,1000) or its own percentiles
    (`percentile`). Values outside the window are clipped."""

    kind: str = "dtype"
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Normalize:
        """`dtype`, `range:LO,HI` or `percentile:P1,P99`; a DataError saying which forms exist."""
        if spec == "dtype":
            return cls()
        match = re.fullmatch(r"(range|percentile):\s*([-+.\deE]+)\s*,\s*([-+.\deE]+)", spec.strip())
        try:
            kind, low, high = match.group(1), float(match.group(2)), float(match.group(3))
        except (AttributeError, ValueError):
            raise DataError(f"{spec!r} is not one of {NORMALIZE_FORMS}") from None
        if not low < high or (kind == "percentile" and not 0 <= low < high <= 100):
            raise DataError(f"{spec!r}: needs LO < HI" + (" within 0..100" if kind == "percentile" else ""))
        return cls(kind, low, high)

    def __str__(self) -> str:
        return self.kind if self.kind == "dtype" else f"{self.kind}:{self.low:g},{self.high:g}"

    @property
    def is_default(self) -> bool:
        return self.kind == "dtype"

    def window(self, array: np.ndarray, name: str = "sample") -> tuple[float, float]:
        """The values that map to -1 and 1 for this sample."""
        if self.kind == "range":
            return self.low, self.high
        if self.kind == "percentile":
            low, high = (float(v) for v in np.percentile(array, (self.low, self.high)))
            return (low, high) if high > low else (low, low + 1.0)  # a flat image maps to -1
        return type_range(array.dtype, name)

    def to_unit(self, array: np.ndarray, name: str = "sample") -> tuple[np.ndarray, tuple[float, float]]:
        """An H x W x C array -> float32 in [-1, 1] (computed in float64), and the window used."""
        low, high = self.window(array, name)
        unit = (array.astype(np.float64) - low) / (high - low) * 2.0 - 1.0
        return np.clip(unit, -1.0, 1.0).astype(np.float32), (low, high)


def type_range(dtype: np.dtype, name: str = "sample") -> tuple[float, float]:
    """The full range of an integer type; float data has none."""
    if not np.issubdtype(dtype, np.integer):
        raise DataError(f"{name}: {dtype} data has no type range to normalise by: set data.normalize to "
                        "range:LO,HI (a fixed window) or percentile:P1,P99")
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def from_unit(unit: np.ndarray, dtype: np.dtype, window: tuple[float, float]) -> np.ndarray:
    """[-1, 1] floats -> values of `dtype` on `window`: the inverse of `Normalize.to_unit`
    (integers rounded and clipped to their type)."""
    low, high = window
    return cast((unit.astype(np.float64) + 1.0) / 2.0 * (high - low) + low, dtype)


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values as `dtype`: rounded and clipped to an integer type's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def image_array(image: Image.Image, name: str = "image") -> np.ndarray:
    """A decoded image as H x W x C of its own depth: uint16 for 16-bit greyscale; float32 for
    float images and for 32-bit integer ones (as Pillow opens signed 16-bit TIFFs; exact below
    2**24), whatever their content; uint8 greyscale or RGB otherwise (alpha dropped, palettes
    expanded)."""
    mode = image.mode
    if mode in HIGH_DEPTH_MODES:
        return checked(np.asarray(image).astype(np.float32 if mode in ("F", "I") else np.uint16)[:, :, None], name)
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8)[:, :, None]
    rgb, _ = to_rgb(image)
    return np.asarray(rgb, dtype=np.uint8)


def is_tiff(source: Path | bytes) -> bool:
    """Whether a file or its bytes are a TIFF (by their first four bytes)."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            head = file.read(4)
    else:
        head = source[:4]
    return head in TIFF_MAGIC


def tiff_array(source: Path | bytes, name: str) -> np.ndarray:
    """A TIFF as H x W x C at its own depth and band count, read by tifffile (Pillow reads 16-bit
    colour as 8 bits and cannot open multi-band or float colour TIFFs). One 2-D image per file:
    its samples or channels, interleaved or planar, become the bands."""
    try:
        with tifffile.TiffFile(source if isinstance(source, Path) else io.BytesIO(source)) as tif:
            series = tif.series[0]
            axes, array = series.axes, series.asarray()
    except Exception as err:  # tifffile raises many kinds for a damaged file
        raise ImageDecodeError(f"{name}: cannot be decoded as a TIFF ({str(err).splitlines()[0] if str(err) else err})") from None
    bands = [i for i, axis in enumerate(axes) if axis in "SC"]
    if set(axes) - set("YXSC") or len(bands) > 1 or "Y" not in axes or "X" not in axes:
        raise ImageDecodeError(f"{name}: a TIFF of shape {array.shape} (axes {axes}); samples are 2-D images with "
                               "bands, one per file")
    array = np.moveaxis(array, bands[0], -1) if bands else array[:, :, None]
    return checked(array, name)


def checked(array: np.ndarray, name: str) -> np.ndarray:
    """An H x W x C array of a supported type (float64 and 32-bit integers become float32, exact
    below 2**24) with finite values."""
    if array.dtype == np.float64 or array.dtype in (np.int32, np.uint32):
        array = array.astype(np.float32)
    if array.dtype.name not in ARRAY_DTYPES:
        raise ImageDecodeError(f"{name}: samples hold {', '.join(ARRAY_DTYPES)}, not {array.dtype}")
    if array.dtype == np.float32 and not np.isfinite(array).all():
        raise ImageDecodeError(f"{name}: holds NaN or infinite values")
    return np.ascontiguousarray(array)


def load_npy(source: Path | bytes, name: str) -> np.ndarray:
    """An `.npy` array as H x W x C (a 2-D array is one band), of a supported type and finite."""
    try:
        array = np.load(source if isinstance(source, Path) else io.BytesIO(source), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ImageDecodeError(f"{name}: cannot be read as a .npy array ({err})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageDecodeError(f"{name}: a .npy sample must be H x W or H x W x C, not of shape {array.shape}")
    return checked(array, name)


def tiff_header(path: Path) -> tuple[tuple[int, int], int, np.dtype]:
    """(width, height), bands and type of a TIFF file, from its header alone."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes, dtype = series.shape, series.axes, series.dtype
    bands = next((shape[axes.index(axis)] for axis in "SC" if axis in axes), 1)
    return (shape[axes.index("X")], shape[axes.index("Y")]), bands, np.dtype(dtype)


def open_sample(source: Path | bytes, name: str, is_npy: bool) -> Image.Image | np.ndarray:
    """A sample as a PIL image when it is an 8-bit image the official path takes, else as an
    H x W x C array at its own depth: `.npy` arrays, TIFFs other than 8-bit grey or colour, and
    16-bit or float images."""
    if is_npy:
        return load_npy(source, name)
    if is_tiff(source):
        array = tiff_array(source, name)
        if array.dtype != np.uint8 or array.shape[2] not in (1, 3):
            return array
    image = open_image(source, name=name)
    return image_array(image, name) if image.mode in HIGH_DEPTH_MODES else image


def read_array(source: Path | bytes, name: str, is_npy: bool) -> np.ndarray:
    """A file's or sample's bytes as an H x W x C array of its own depth (TIFFs by tifffile)."""
    if is_npy:
        return load_npy(source, name)
    if is_tiff(source):
        return tiff_array(source, name)
    return image_array(open_image(source, name=name), name)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def fit_bands(array: np.ndarray, channels: int, name: str, from_image: bool) -> np.ndarray:
    """The sample with the domain's `channels` bands. Image files give greyscale or colour: grey
    repeats into 3 channels, grey saved as RGB becomes one; arrays must have exactly `channels`."""
    bands = array.shape[2]
    if bands == channels:
        return array
    if from_image and channels == 3 and bands == 1:
        return np.repeat(array, 3, axis=2)
    if from_image and channels == 1 and bands == 3:
        if not is_grey(array):
            raise ChannelMismatch(f"{name}: a colour image in a 1-channel (greyscale) domain; convert the domain's "
                                  "images to greyscale, or give the domain 3 channels")
        return array[:, :, :1]
    raise ChannelMismatch(f"{name}: has {bands} band(s), but its domain has {channels} (model.input_nc for A, "
                          "model.output_nc for B)")


def is_grey(array: np.ndarray) -> bool:
    """Whether a 3-band array is grey: its bands within `GREY_TOLERANCE` levels of 255 of each other
    (of the type's range for integers, of the image's own range for floats)."""
    values = array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        low, high = type_range(array.dtype)
    else:
        low, high = float(values.min()), float(values.max())
    spread = max(np.abs(values[:, :, 0] - values[:, :, 1]).max(), np.abs(values[:, :, 1] - values[:, :, 2]).max())
    return spread <= GREY_TOLERANCE * (high - low) / 255


def describe(array: np.ndarray) -> dict:
    """What the manifest records of one sample: type, bands and value range."""
    return {"dtype": array.dtype.name, "bands": int(array.shape[2]),
            "min": float(array.min()), "max": float(array.max())}


def is_deep(is_npy: bool, mode: str | None, normalize: Normalize, *channels: int) -> bool:
    """Whether a sample takes this module's path rather than the official 8-bit one: an array, an
    image deeper than 8 bits, a normalisation other than the type's range, or (in or out) a band
    count no image file has."""
    return is_npy or mode in HIGH_DEPTH_MODES or not normalize.is_default or any(c not in (1, 3) for c in channels)


def output_format(is_npy: bool, source_format: str | None, dtype: np.dtype, bands: int) -> str:
    """The file format that holds a translation at the input's depth: `.npy` for `.npy` inputs; a
    TIFF (any type and band count) for TIFF inputs; for other images a 16-bit greyscale or 8-bit
    PNG, or `.npy` where a PNG cannot hold the result (16-bit colour, other band counts)."""
    dtype = np.dtype(dtype)
    if is_npy:
        return "npy"
    if source_format == "TIFF":
        return "tif"
    if (bands == 1 and dtype == np.uint16) or (dtype == np.uint8 and bands in (1, 3)):
        return "png"
    return "npy"


def encode(array: np.ndarray, fmt: str) -> bytes:
    """An H x W x C array as the bytes of a `fmt` file (see `output_format`)."""
    if fmt == "npy":
        return npy_bytes(array)
    buffer = io.BytesIO()
    bands = array.shape[2]
    if fmt == "tif":
        tifffile.imwrite(buffer, array[:, :, 0] if bands == 1 else array, photometric="rgb" if bands == 3 else
                         "minisblack", planarconfig="contig" if bands > 1 else None)
    else:
        Image.fromarray(array[:, :, 0] if bands == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()
