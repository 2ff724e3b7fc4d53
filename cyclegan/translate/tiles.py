"""Exact translation of images of any size, in memory bounded by the tile size.

Instance norm normalises each channel with statistics of the whole image, so translating tiles
independently is wrong: each tile gets statistics of its own, tones shift and seams show. Here
the generator runs layer by layer over the whole image instead. Each convolution is computed
tile by tile, reading from the previous layer's output exactly the margin its kernel needs
(reflected or zero-padded at the image's border, as the untiled network pads), and writes its
output to a scratch file while accumulating per-channel statistics of it; the instance norm and
ReLU that follow are applied as the next layer reads. The anti-aliased layers of the official
CUT layout (`cyclegan.models.antialias`) are depthwise convolutions with fixed filters, computed the
same way. Every layer so sees what it would see untiled: the result equals the untiled translation
up to float rounding, with no overlap to blend. Memory holds the input and output images (8-bit, or
float32 for deeper data: four times the bytes) and a few tiles; the activations live in scratch
files in the temporary directory (TMPDIR), unlinked at once so that the system frees them however
the process ends (at their peak 6 bytes x ngf per pixel: 384 for the paper's; twice that for the
anti-aliased layout, see `scratch_bytes`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cyclegan.errors import DataError
from cyclegan.images import to_uint8
from cyclegan.io.samples import as_unit
from cyclegan.models.antialias import Downsample, Upsample
from cyclegan.models.generator import ResnetBlock, ResnetGenerator

NUMPY_PADDING = {"reflect": "reflect", "replicate": "edge", "zeros": "constant"}  # torch's names -> numpy's


class Moments:
    """Per-channel count, mean and sum of squared deviations, merged tile by tile (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count, self.mean, self.m2 = 0, np.zeros(channels), np.zeros(channels)

    def add(self, block: np.ndarray) -> None:
        values = block.reshape(-1, block.shape[-1])
        n, mean = len(values), values.mean(0, dtype=np.float64)
        centered = values - mean.astype(np.float32)
        delta, total = mean - self.mean, self.count + n
        self.m2 += np.einsum("ij,ij->j", centered, centered, dtype=np.float64) + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def affine(self, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """Scale and shift of instance norm over everything added (biased variance, as torch)."""
        scale = 1.0 / np.sqrt(self.m2 / self.count + eps)
        return scale, -self.mean * scale


class Plane:
    """One layer's output over the whole image, H x W x C float32, and what its reader applies
    first: a per-channel affine (a norm layer) and a ReLU. Subclasses say where it is stored."""

    def __init__(self, height: int, width: int, channels: int) -> None:
        self.height, self.width, self.channels = height, width, channels
        self.moments = Moments(channels)
        self.scale: np.ndarray | None = None
        self.shift: np.ndarray | None = None
        self.relu = False

    def region(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        raise NotImplementedError

    def store(self, top: int, left: int, block: np.ndarray) -> None:
        raise NotImplementedError

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        self.moments.add(block)
        self.store(top, left, block)

    def close(self) -> None:
        pass

    def then_affine(self, scale: np.ndarray, shift: np.ndarray) -> None:
        if self.relu:
            raise ValueError("a norm after the ReLU cannot be folded into the reader")
        if self.scale is None:
            self.scale, self.shift = scale, shift
        else:
            self.scale, self.shift = self.scale * scale, self.shift * scale + shift

    def read(self, top: int, bottom: int, left: int, right: int, padding: str) -> np.ndarray:
        """Rows [top, bottom) and columns [left, right), which may reach past the border by less than
        the image's size: those are `padding` (reflect, replicate or zeros, as torch names them),
        after the pending affine and ReLU."""
        inside = (max(top, 0), min(bottom, self.height), max(left, 0), min(right, self.width))
        block = self.region(*inside).astype(np.float32)
        if self.scale is not None:
            block = block * self.scale.astype(np.float32) + self.shift.astype(np.float32)
        if self.relu:
            block = np.maximum(block, 0)
        margins = ((inside[0] - top, bottom - inside[1]), (inside[2] - left, right - inside[3]), (0, 0))
        if any(any(m) for m in margins):
            block = np.pad(block, margins, mode=NUMPY_PADDING[padding])
        return block


class DiskPlane(Plane):
    """A plane in a scratch file, read and written a row at a time (never mapped, so the pages
    it passes through are not held by the process). The file is unlinked as soon as it is made:
    the system frees it when the process lets go of it, however the process ends."""

    def __init__(self, folder: Path, height: int, width: int, channels: int) -> None:
        super().__init__(height, width, channels)
        self.fd, name = tempfile.mkstemp(dir=folder, suffix=".plane")
        os.unlink(name)

    def _offset(self, row: int, column: int) -> int:
        return (row * self.width + column) * self.channels * 4

    def region(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        length = (right - left) * self.channels * 4
        rows = [os.pread(self.fd, length, self._offset(row, left)) for row in range(top, bottom)]
        return np.frombuffer(b"".join(rows), dtype=np.float32).reshape(bottom - top, right - left, self.channels)

    def store(self, top: int, left: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32)
        for i, row in enumerate(block):
            os.pwrite(self.fd, row.tobytes(), self._offset(top + i, left))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ImagePlane(Plane):
    """The input image, read as the network's [-1, 1] input: 8-bit pixels normalised block by block
    as the untiled path normalises them, or float32 values already in [-1, 1] as they are
    (`cyclegan.io.samples.as_unit`)."""

    def __init__(self, pixels: np.ndarray) -> None:
        super().__init__(*pixels.shape)
        self.pixels = pixels

    def region(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        block = self.pixels[top:bottom, left:right]
        return as_unit(torch.from_numpy(np.ascontiguousarray(block))).numpy()


class TiledRun:
    """The generator's layers applied to whole-image planes, tile by tile. Tiles are `tile` pixels
    at full resolution and proportionally smaller in the inner, downsampled layers."""

    def __init__(self, scratch: Path, tile: int, full_height: int, compute: Callable[..., np.ndarray],
                 bar: tqdm | None = None) -> None:
        self.scratch, self.tile, self.full_height, self.compute = scratch, tile, full_height, compute
        self.planes: list[DiskPlane] = []
        self.bar = bar  # advanced once per convolution: a large image takes minutes

    def new_plane(self, height: int, width: int, channels: int) -> DiskPlane:
        plane = DiskPlane(self.scratch, height, width, channels)
        self.planes.append(plane)
        return plane

    def tiles(self, height: int, width: int):
        """(top, bottom, left, right) of the tiles covering a plane of this size."""
        step = max(1, round(self.tile * height / self.full_height))
        for top in range(0, height, step):
            for left in range(0, width, step):
                yield top, min(top + step, height), left, min(left + step, width)

    def convolve(self, conv: nn.Conv2d | nn.ConvTranspose2d, source: Plane, pad: tuple[int, str]) -> DiskPlane:
        """`conv` over `source`, after `pad` = (pixels, mode) from a ReflectionPad2d before it, or
        with the convolution's own zero padding. A transposed convolution reads past the border
        in `pad`'s mode (its own padding crops the output)."""
        k, s = conv.kernel_size[0], conv.stride[0]
        transposed = isinstance(conv, nn.ConvTranspose2d)
        if transposed:  # out[o] takes in[i] where o + p = i * s + j, j < k
            p = conv.padding[0]
            height, width = [(n - 1) * s - 2 * p + k + conv.output_padding[0] for n in (source.height, source.width)]
        else:
            p = pad[0] + conv.padding[0]
            height, width = [(n + 2 * p - k) // s + 1 for n in (source.height, source.width)]
        out = self.new_plane(height, width, conv.out_channels)
        for top, bottom, left, right in self.tiles(height, width):
            if transposed:
                (r0, r1), (c0, c1) = (_transposed_inputs(a, b, k, s, p) for a, b in ((top, bottom), (left, right)))
                result = self.compute(conv, source.read(r0, r1, c0, c1, pad[1]))
                dy, dx = top + p - r0 * s, left + p - c0 * s
                result = result[dy:dy + bottom - top, dx:dx + right - left]
            else:
                mode = pad[1] if pad[0] else "zeros"
                block = source.read(top * s - p, (bottom - 1) * s - p + k, left * s - p, (right - 1) * s - p + k, mode)
                result = self.compute(conv, block)
            out.write(top, left, result)
        if self.bar is not None:
            self.bar.update()
        return out

    def add(self, first: Plane, second: Plane) -> DiskPlane:
        """The residual sum of two planes of one size, each after its pending affine and ReLU."""
        out = self.new_plane(first.height, first.width, first.channels)
        for top, bottom, left, right in self.tiles(first.height, first.width):
            out.write(top, left, first.read(top, bottom, left, right, "zeros")
                      + second.read(top, bottom, left, right, "zeros"))
        return out

    def layers(self, modules: list[nn.Module], given: Plane) -> Plane:
        """`modules` applied to `given`; planes made on the way are closed once read for good."""
        plane, pad = given, (0, "zeros")

        def replace(new: Plane) -> Plane:
            if plane is not given:
                plane.close()
            return new

        for module in modules:
            if isinstance(module, nn.ReflectionPad2d):
                pad = (module.padding[0], "reflect")
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                plane, pad = replace(self.convolve(module, plane, pad)), (0, "zeros")
            elif isinstance(module, (Downsample, Upsample)):
                blur, blur_pad = module.as_convolution()  # the fixed filter as a depthwise convolution
                plane, pad = replace(self.convolve(blur, plane, blur_pad)), (0, "zeros")
            elif isinstance(module, nn.InstanceNorm2d):
                if module.affine or module.track_running_stats:
                    raise TypeError("tiled translation takes instance norm without affine parameters or statistics")
                plane.then_affine(*plane.moments.affine(module.eps))
            elif isinstance(module, nn.BatchNorm2d):  # in eval mode: an affine from the running statistics
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                shift = module.bias - module.running_mean * scale
                plane.then_affine(scale.double().cpu().numpy(), shift.double().cpu().numpy())
            elif isinstance(module, nn.ReLU):
                plane.relu = True
            elif isinstance(module, ResnetBlock):
                inner = self.layers(list(module.conv_block), plane)
                total = self.add(plane, inner)
                inner.close()
                plane = replace(total)
            elif not isinstance(module, (nn.Identity, nn.Dropout, nn.Tanh)):
                raise TypeError(f"tiled translation does not know {type(module).__name__}")
        return plane


def _transposed_inputs(first: int, stop: int, k: int, s: int, p: int) -> tuple[int, int]:
    """The input rows a transposed convolution needs for output rows [first, stop)."""
    return -(-(first + p - k + 1) // s), (stop - 1 + p) // s + 1


def scratch_bytes(net: ResnetGenerator, height: int, width: int) -> int:
    """Peak scratch space, in float32: the first layer's ngf channels beside the next convolution's
    2 ngf, at a quarter of the pixels where it strides, at all of them where it is anti-aliased (it
    convolves at full size; the blur after it subsamples). The upsampling mirrors it."""
    next_pixels = 1 if net.spec.antialias else 1 / 4
    return int(height * width * net.spec.ngf * 4 * (1 + 2 * next_pixels))


def translate_tiled(net: ResnetGenerator, pixels: np.ndarray, tile: int, device: torch.device,
                    bf16: bool = False) -> np.ndarray:
    """An 8-bit H x W x C image -> its 8-bit translation, in tiles of `tile` pixels; a float32 one
    in [-1, 1] -> its float32 translation in [-1, 1]."""
    if not isinstance(net.model[-1], nn.Tanh):
        raise TypeError("tiled translation expects the generator to end in tanh")
    height, width = pixels.shape[:2]
    scratch = Path(tempfile.gettempdir())
    needed, free = scratch_bytes(net, height, width), shutil.disk_usage(scratch).free
    if needed > free:
        raise DataError(f"translating a {width} x {height} px image in tiles needs about {needed / 2**30:.1f} GiB of "
                        f"scratch space in {scratch}, which has {free / 2**30:.1f} GiB free: point TMPDIR at a larger "
                        "disk")
    pad_h, pad_w = -height % 4, -width % 4  # as untiled: the generator downsamples twice
    padded = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect") if pad_h or pad_w else pixels

    def compute(conv: nn.Module, block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1)))[None].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if isinstance(conv, nn.ConvTranspose2d):
                y = F.conv_transpose2d(x, conv.weight, conv.bias, conv.stride, 0, 0, conv.groups, conv.dilation)
            else:
                y = F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        return y[0].float().permute(1, 2, 0).cpu().numpy()

    layers = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, Downsample, Upsample)) for m in net.modules())
    bar = tqdm(total=layers, desc=f"{width} x {height} px in {tile} px tiles", unit="layer", leave=False,
               disable=int(os.environ.get("RANK", "0")) != 0)  # one bar, as translation's own
    run = TiledRun(scratch, tile, padded.shape[0], compute, bar)
    with torch.no_grad(), bar:
        try:
            out = run.layers(list(net.model), ImagePlane(padded))
            eight_bit = pixels.dtype == np.uint8
            image = np.empty((height, width, out.channels), dtype=np.uint8 if eight_bit else np.float32)
            for top, bottom, left, right in run.tiles(height, width):
                y = np.tanh(out.read(top, bottom, left, right, "zeros"))
                image[top:bottom, left:right] = to_uint8(torch.from_numpy(y)).numpy() if eight_bit else y
        finally:
            for plane in run.planes:
                plane.close()
    return image
