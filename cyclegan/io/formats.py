"""File formats of samples at any depth and band count: reading 16-bit PNGs (pypng), TIFFs
beyond Pillow (tifffile) and `.npy` arrays as H x W x C arrays, probing a file's header, and
encoding arrays as PNG, TIFF or `.npy` bytes. 8-bit images Pillow reads stay PIL images (the
official path); which path a sample takes is `cyclegan.io.samples`'s decision."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import tifffile
from PIL import Image

from cyclegan.images import ARRAY_EXTENSIONS, HIGH_DEPTH_MODES, ImageDecodeError, open_image, to_rgb

logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # a damaged file gets one message, ours, not its warnings
ARRAY_DTYPES = ("uint8", "uint16", "int16", "float32")  # what `.npy` and TIFF samples may hold
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION = 0x0112  # the EXIF (and TIFF) tag saying how to turn an image to show it
TURNED = (5, 6, 7, 8)  # orientations that turn it by 90 degrees: width and height swap
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, either byte order


def image_array(image: Image.Image, name: str = "image") -> np.ndarray:
    """A decoded image as H x W x C of its own depth: uint16 for 16-bit greyscale; float32 for
    float images and for 32-bit integer ones (as Pillow opens signed 16-bit TIFFs; exact below
    2**24), whatever their content; uint8 greyscale or RGB otherwise (alpha dropped, palettes
    expanded)."""
    if image.mode in HIGH_DEPTH_MODES:
        return checked(np.asarray(image).astype(pillow_dtype(image))[:, :, None], name)
    mode = image.mode
    if mode in ("L", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8)[:, :, None]
    rgb, _ = to_rgb(image)
    return np.asarray(rgb, dtype=np.uint8)


def head(source: Path | bytes, size: int) -> bytes:
    """The first `size` bytes of a file or of its bytes."""
    if isinstance(source, Path):
        with source.open("rb") as file:
            return file.read(size)
    return source[:size]


def is_tiff(source: Path | bytes) -> bool:
    """Whether a file or its bytes are a TIFF (by their first four bytes)."""
    return head(source, 4) in TIFF_MAGIC


def is_deep_png(source: Path | bytes) -> bool:
    """A 16-bit PNG with colour or alpha (its header says), which Pillow would read as 8 bits."""
    start = head(source, 26)
    return (len(start) == 26 and start[:8] == PNG_SIGNATURE and start[12:16] == b"IHDR" and start[24] == 16
            and start[25] in (2, 4, 6))


def png_array(source: Path | bytes, name: str) -> np.ndarray:
    """A 16-bit colour (or grey with alpha) PNG as H x W x C uint16, read by pypng; alpha dropped,
    as for every image."""
    try:
        reader = png.Reader(filename=str(source)) if isinstance(source, Path) else png.Reader(bytes=source)
        width, height, rows, info = reader.asDirect()
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, info["planes"])
    except (png.Error, ValueError, OSError, EOFError) as err:
        raise ImageDecodeError(f"{name}: cannot be decoded as a 16-bit PNG ({err})") from None
    return checked(array[:, :, :-1] if info["alpha"] else array, name)


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF's first page says of its pixels: size, samples (bands, and alpha or not), type,
    CMYK or not, and so whether Pillow reads them faithfully (8-bit grey, colour, CMYK, palette,
    1-bit, with alpha or without; 16-bit and float32 grey) or tifffile must (16-bit or float
    colour, other band counts, other grey types)."""

    size: tuple[int, int]
    bands: int
    alpha: bool
    dtype: np.dtype
    pages: int
    cmyk: bool = False
    orientation: int = 1

    @property
    def for_pillow(self) -> bool:
        if self.dtype in (np.uint8, np.bool_):
            return (self.cmyk and self.bands == 4 and not self.alpha) or (self.bands in (1, 3) and
                                                                          self.bands + self.alpha <= 4)
        return self.bands + self.alpha == 1 and self.dtype in (np.uint16, np.float32)


def tiff_header(source: Path | bytes, name: str = "image") -> TiffHeader:
    """A TIFF's header (no pixels decoded, so any compression will do)."""
    try:
        with tifffile.TiffFile(source if isinstance(source, Path) else io.BytesIO(source)) as tif:
            page, pages = tif.pages.first, len(tif.pages)
            samples, extras = page.samplesperpixel, tuple(page.extrasamples or ())
            alpha = bool(extras) and int(extras[-1]) in (1, 2)  # associated or unassociated alpha
            cmyk = int(page.photometric) == 5  # SEPARATED (ink planes)
            turn = page.tags.get(ORIENTATION)
            return TiffHeader((page.imagewidth, page.imagelength), samples - alpha, alpha, np.dtype(page.dtype),
                              pages, cmyk, int(turn.value) if turn is not None else 1)
    except Exception as err:  # tifffile raises many kinds for a damaged file
        raise ImageDecodeError(f"{name}: cannot be read as a TIFF ({str(err).splitlines()[0] if str(err) else err})") \
            from None


def tiff_array(source: Path | bytes, name: str) -> np.ndarray:
    """A TIFF that Pillow cannot read at its depth (see `TiffHeader.for_pillow`) as H x W x C, read
    by tifffile: one 2-D image per file, its samples, interleaved or planar, as the bands, alpha
    dropped as for every image."""
    header = tiff_header(source, name)
    try:
        with tifffile.TiffFile(source if isinstance(source, Path) else io.BytesIO(source)) as tif:
            array = tif.pages.first.asarray()
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "; pip install imagecodecs for its compression" if "imagecodecs" in reason else ""
        raise ImageDecodeError(f"{name}: cannot be decoded as a TIFF ({reason}){hint}") from None
    if array.ndim == 3 and array.shape[0] == header.bands + header.alpha and array.shape[-1] != array.shape[0]:
        array = np.moveaxis(array, 0, -1)  # planar: band after band
    array = array[:, :, None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[:2] != header.size[::-1]:
        raise ImageDecodeError(f"{name}: a TIFF of shape {array.shape}; samples are 2-D images with bands")
    return checked(array[:, :, :header.bands], name)


def checked(array: np.ndarray, name: str) -> np.ndarray:
    """An H x W x C array of a supported type (float16, float64 and 32-bit integers become
    float32, the integers exact below 2**24) with finite values."""
    if array.dtype in (np.float16, np.float64, np.int32, np.uint32):
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


def open_sample(source: Path | bytes, name: str, is_npy: bool,
                draft: tuple[int, int] | None = None) -> Image.Image | np.ndarray:
    """A sample as a PIL image when it is an 8-bit image the official path takes, else as an
    H x W x C array at its own depth: `.npy` arrays, TIFFs Pillow cannot read at their depth
    (tifffile), 16-bit colour PNGs (pypng), and 16-bit or float images. `draft` as `open_image`."""
    if is_npy:
        return load_npy(source, name)
    if is_deep_png(source):
        return png_array(source, name)
    if is_tiff(source):
        header = tiff_header(source, name)
        if header.pages > 1:
            raise ImageDecodeError(f"{name}: a TIFF of {header.pages} pages; samples are single 2-D images")
        if not header.for_pillow:
            return tiff_array(source, name)
    image = open_image(source, name=name, draft=draft)
    return image_array(image, name) if image.mode in HIGH_DEPTH_MODES else image


def read_array(source: Path | bytes, name: str, is_npy: bool) -> np.ndarray:
    """A file's or sample's bytes as an H x W x C array of its own depth."""
    opened = open_sample(source, name, is_npy)
    return opened if isinstance(opened, np.ndarray) else image_array(opened, name)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def describe(array: np.ndarray) -> dict:
    """What the manifest records of one sample: type, bands and value range."""
    return {"dtype": array.dtype.name, "bands": int(array.shape[2]),
            "min": float(array.min()), "max": float(array.max())}


@dataclass(frozen=True)
class Probe:
    """What a file's header says: (width, height) as the sample is read (turned by its EXIF
    orientation where Pillow reads it, as `cyclegan.images.upright` turns it, so that files
    grouped by size can be stacked), its kind ("npy", "tif", "png" or another image format),
    value type, bands (alpha left out), and whether only this module reads it at its depth
    (arrays, 16-bit colour PNGs, TIFFs beyond Pillow)."""

    size: tuple[int, int]
    kind: str
    dtype: np.dtype
    bands: int
    beyond_pillow: bool

    @property
    def deep(self) -> bool:
        """Off the official 8-bit path whatever the settings: beyond Pillow, or deeper than 8 bits."""
        return self.beyond_pillow or self.dtype not in (np.uint8, np.bool_)


def probe(path: Path | bytes, name: str | None = None) -> Probe:
    """A file's (or a tar member's image bytes') `Probe`, from its header alone; ImageDecodeError
    for what cannot be a sample (an empty, unreadable or damaged file, a multi-page TIFF, an array
    of other than 2 or 3 dimensions). `name` names it in messages (by default its path, or
    "sample" for bytes, which are not put into a message)."""
    name = name or (str(path) if isinstance(path, Path) else "sample")
    try:
        if (path.stat().st_size if isinstance(path, Path) else len(path)) == 0:
            raise ImageDecodeError(f"{name}: empty file (0 bytes)")
        return _probe(path, name)
    except ImageDecodeError:
        raise
    except Exception as err:  # PIL, numpy and the file system raise many kinds for a bad file
        raise ImageDecodeError(f"{name}: cannot be decoded ({err})") from None


def _probe(path: Path | bytes, name: str) -> Probe:
    if isinstance(path, Path) and path.suffix.lower() in ARRAY_EXTENSIONS:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
            raise ImageDecodeError(f"{name}: a .npy sample must be an H x W or H x W x C array")
        return Probe((array.shape[1], array.shape[0]), "npy", array.dtype, array.shape[2] if array.ndim == 3 else 1,
                     True)
    if is_deep_png(path):
        start = head(path, 26)
        size = (int.from_bytes(start[16:20], "big"), int.from_bytes(start[20:24], "big"))
        return Probe(size, "png", np.dtype(np.uint16), 1 if start[25] == 4 else 3, True)
    if is_tiff(path):
        header = tiff_header(path, name)
        if header.pages > 1:
            raise ImageDecodeError(f"{name}: a TIFF of {header.pages} pages; samples are single 2-D images")
        bands = 3 if header.cmyk and header.for_pillow else header.bands  # Pillow turns CMYK into RGB
        turned = header.for_pillow and header.orientation in TURNED  # tifffile reads the pixels as stored
        return Probe(header.size[::-1] if turned else header.size, "tif", header.dtype, bands, not header.for_pillow)
    with Image.open(path if isinstance(path, Path) else io.BytesIO(path)) as image:
        size, dtype = image.size, pillow_dtype(image)
        bands = 1 if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;16") else 3
        # a PNG's EXIF after its pixels (against the PNG specification) would need them decoded: not looked for
        late = image.format == "PNG" and "exif" not in image.info
        turned = not late and image.getexif().get(ORIENTATION) in TURNED
    return Probe(size[::-1] if turned else size, (image.format or "image").lower(), dtype, bands, False)


def pillow_dtype(image: Image.Image) -> np.dtype:
    """The type `image_array` gives a Pillow image: uint16 for 16-bit grey (Pillow's "I" of 16-bit
    PGM files included), float32 for float and other 32-bit integer images, else uint8."""
    mode = image.mode
    if mode.startswith("I;16") or (mode == "I" and image.format == "PPM"):  # PNM samples are unsigned, <= 16 bits
        return np.dtype(np.uint16)
    return np.dtype(np.float32 if mode in ("F", "I") else np.uint8)


def fits_png(dtype: np.dtype, bands: int) -> bool:
    """Whether a PNG holds an array of this type and band count (8- or 16-bit, grey or colour)."""
    return dtype in (np.uint8, np.uint16) and bands in (1, 3)


def encode(array: np.ndarray, fmt: str) -> bytes:
    """An H x W x C array as the bytes of a `fmt` file: npy, tif (any type and band count) or png
    (see `fits_png`)."""
    if fmt == "npy":
        return npy_bytes(array)
    buffer = io.BytesIO()
    bands = array.shape[2]
    if fmt == "tif":
        tifffile.imwrite(buffer, array[:, :, 0] if bands == 1 else array, photometric="rgb" if bands == 3 else
                         "minisblack", planarconfig="contig" if bands > 1 else None)
    elif array.dtype == np.uint16 and bands == 3:  # Pillow has no 16-bit colour mode
        png.Writer(array.shape[1], array.shape[0], greyscale=False, bitdepth=16).write(
            buffer, array.reshape(array.shape[0], -1))
    else:
        Image.fromarray(array[:, :, 0] if bands == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()
