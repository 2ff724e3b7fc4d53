"""What the demo page does with an upload: images go through the translation command's own path
(`cyclegan.translate.files.translate_files`: the same reading, tiling and output formats, so a
download equals `cyclegan-translate`'s file bit for bit), videos through its video path. Each
request works in a folder of its own; what a visitor did wrong comes back as one `DataError`
line per file, for the page to show."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from cyclegan.errors import DataError, UserError
from cyclegan.images import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, ImageDecodeError
from cyclegan.io.formats import probe
from cyclegan.io.samples import Decoding, Sample, read_sample, to_unit_tensor
from cyclegan.tracking import image_grid
from cyclegan.translate.core import Translator
from cyclegan.translate.files import plan_outputs, translate_files
from cyclegan.translate.video import VIDEO_EXTENSIONS, translate_video

PREVIEW_SIDE = 1024  # pixels: the longer side of a side-by-side preview; the download keeps full size
KEEP_SECONDS = 3600  # a request's folder is removed by a later request once this old
READ = IMAGE_EXTENSIONS | ARRAY_EXTENSIONS  # the suffixes translation lists in a folder


@dataclass
class Translated:
    """One request's results: side-by-side previews (input | translation, 8-bit RGB) with their
    captions, the translated files at full resolution, and notes on what was left out."""

    previews: list[tuple[np.ndarray, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def request_folder(work: Path) -> Path:
    """A new folder for one request under `work`; folders of requests older than an hour go."""
    now = time.time()
    for old in work.glob("request-*"):
        try:
            if now - old.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass
    return Path(tempfile.mkdtemp(prefix="request-", dir=work))


def too_large(width: int, height: int, max_pixels: int) -> str | None:
    if width * height <= max_pixels:
        return None
    return f"{width} x {height} px = {width * height:,} pixels, more than this page takes ({max_pixels:,}, --max-pixels)"


def accept(uploads: list[Path], folder: Path, max_pixels: int) -> tuple[list[Path], list[str]]:
    """The uploads that are images within the pixel limit, copied into `folder` under their own
    names (a repeated name gets a number); one line for each refused upload."""
    folder.mkdir(parents=True, exist_ok=True)
    accepted, refused = [], []
    for upload in uploads:
        name = upload.name
        if upload.suffix.lower() in VIDEO_EXTENSIONS:
            refused.append(f"{name}: a video; translate it under Video")
            continue
        if upload.suffix.lower() not in READ:  # translation lists these alone (and none is served as a page)
            refused.append(f"{name}: not a file this page reads ({', '.join(sorted(READ))})")
            continue
        try:
            header = probe(upload, name)
        except ImageDecodeError as err:
            reason = str(err).replace(str(upload), name)  # the server's temporary path is no business of the visitor
            refused.append(f"{reason}: not an image this page reads (PNG, JPEG, TIFF, .npy, ...)")
            continue
        if (reason := too_large(*header.size, max_pixels)) is not None:
            refused.append(f"{name}: {reason}")
            continue
        target, n = folder / name, 1
        while target.exists():
            n += 1
            target = folder / f"{upload.stem} ({n}){upload.suffix}"
        shutil.copyfile(upload, target)
        accepted.append(target)
    return accepted, refused


def translate_uploads(translator: Translator, uploads: list[Path], work: Path, max_pixels: int) -> Translated:
    """Translate uploaded image files as `cyclegan-translate` translates a folder of them. Raises
    DataError, naming each file and why, when none could be translated."""
    folder = request_folder(work)
    inputs, outputs = folder / "input", folder / "translated"
    accepted, refused = accept(uploads, inputs, max_pixels)
    result = Translated(notes=refused)
    if accepted:
        try:  # the same plan as translate_files makes: it lists exactly the accepted files
            headers, decoding, names = plan_outputs(translator, accepted, inputs)
            report = translate_files(translator, inputs, outputs)
        except UserError as err:  # e.g. two uploads that would share an output's name
            raise DataError(str(err).replace(f"{inputs}/", "")) from None
        result.notes += [line.replace(f"{inputs}/", "") for line in report.skipped]
        written = Decoding.of(translator.out_channels, translator.output_normalize, decoding.all_deep)
        for path in accepted:
            target = outputs / names[path.relative_to(inputs)]
            if target.is_file():
                result.files.append(target)
                tiled = translator.tile_for(*headers[path].size[::-1])
                how = f", in {tiled} px tiles" if tiled else ""
                result.previews.append((side_by_side(read_sample(path, decoding), read_sample(target, written)),
                                        f"{path.name} -> {target.name}{how}"))
    if not result.files:
        raise DataError("nothing to translate: " + "; ".join(result.notes or ["no file was given"]))
    return result


def shown(sample: Sample) -> torch.Tensor:
    """A sample as a [-1, 1] 1CHW tensor for display, its longer side at most `PREVIEW_SIDE`."""
    x = to_unit_tensor(sample.array())[None].float()
    scale = PREVIEW_SIDE / max(x.shape[-2:])
    return F.interpolate(x, scale_factor=scale, mode="area") if scale < 1 else x


def side_by_side(given: Sample, translated: Sample) -> np.ndarray:
    """Input | translation as one 8-bit RGB image, grey and multi-band data shown as the sample
    grids show them."""
    return image_grid([shown(given), shown(translated)])


def thumbnail(translator: Translator, path: Path) -> np.ndarray:
    """An input file as the generator reads it, for display (8-bit RGB)."""
    return image_grid([shown(translator.read(path))])


def translate_upload_video(translator: Translator, upload: Path, work: Path, max_pixels: int) -> tuple[Path, str | None]:
    """A video translated frame by frame with its audio, as `cyclegan-translate` does: an MP4
    (WebM for a WebM), which a browser plays. Returns the file and a note when frames were missing."""
    if upload.suffix.lower() not in VIDEO_EXTENSIONS:
        raise DataError(f"{upload.name}: not a video this page reads ({', '.join(sorted(VIDEO_EXTENSIONS))})")
    try:
        with av.open(str(upload)) as container:
            if not container.streams.video:
                raise DataError(f"{upload.name} holds no video stream")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
    except av.FFmpegError as err:
        raise DataError(f"{upload.name} cannot be read as a video ({str(err).replace(str(upload), upload.name)})") from None
    if (reason := too_large(*size, max_pixels)) is not None:
        raise DataError(f"{upload.name}: frames of {reason}")
    suffix = ".webm" if upload.suffix.lower() == ".webm" else ".mp4"
    target = request_folder(work) / f"{upload.stem}-{translator.direction}{suffix}"
    try:
        _, short = translate_video(translator, upload, target)
    except UserError as err:
        raise DataError(str(err).replace(str(upload), upload.name)) from None
    return target, short
