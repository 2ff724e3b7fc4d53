"""A video in, a video out: every frame translated in batches, with the input's frame count,
frame rate and size (each frame keeps its time, on the grid of the input's nominal rate); audio streams copied as they are (re-encoded only where
the container cannot hold their codec). PyAV brings FFmpeg in its wheel: nothing to install by hand.

Optional temporal smoothing (`smoothing` > 0) fights flicker, the frame-to-frame jitter a
per-frame translation shows where nothing moves: each output pixel is pulled towards the
previous output in proportion to how still the input is there, so moving content follows the
new frame. `flicker` measures the jitter: the mean change of output pixels between frames
where the input changed by less than two levels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from cyclegan.errors import DataError
from cyclegan.translate.core import Translator

VIDEO_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
STILL_LEVELS = 2  # input changes below this many levels (of 255) count as "nothing moves"
MOTION_SCALE = 4.0  # levels of input change at which smoothing has fallen to 1/e


def encoder_for(path: Path, width: int, height: int) -> tuple[str, dict, str]:
    """(codec, options, pixel format) for the output container: VP9 in WebM, H.264 elsewhere,
    at a quality that hides nothing the translation shows; 4:4:4 when a size is odd."""
    even = width % 2 == 0 and height % 2 == 0
    if path.suffix.lower() == ".webm":
        return "libvpx-vp9", {"crf": "20", "b": "0"}, "yuv420p" if even else "yuv444p"
    return "libx264", {"crf": "16", "preset": "medium"}, "yuv420p" if even else "yuv444p"


class Smoother:
    """Pulls each output frame towards the previous one where the input did not change."""

    def __init__(self, strength: float) -> None:
        self.strength, self.previous_in, self.previous_out = strength, None, None

    def __call__(self, frame_in: np.ndarray, frame_out: np.ndarray) -> np.ndarray:
        out = frame_out.astype(np.float32)
        if self.previous_in is not None and self.strength > 0:
            change = np.abs(frame_in.astype(np.float32) - self.previous_in).mean(axis=2, keepdims=True)
            keep = self.strength * np.exp(-change / MOTION_SCALE)
            out = keep * self.previous_out + (1 - keep) * out
        self.previous_in, self.previous_out = frame_in.astype(np.float32), out
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def flicker(frames_in: list[np.ndarray], frames_out: list[np.ndarray]) -> float:
    """Mean |output change| between consecutive frames, over pixels whose input stayed still."""
    changes = []
    for t in range(1, len(frames_in)):
        still = np.abs(frames_in[t].astype(np.int16) - frames_in[t - 1].astype(np.int16)).max(axis=2) < STILL_LEVELS
        moved = np.abs(frames_out[t].astype(np.int16) - frames_out[t - 1].astype(np.int16)).mean(axis=2)
        if still.any():
            changes.append(moved[still].mean())
    return float(np.mean(changes)) if changes else 0.0


def translate_video(translator: Translator, source: Path, target: Path, batch_size: int = 4,
                    smoothing: float = 0.0) -> int:
    """Translate every frame of `source` into `target`; returns the number of frames."""
    try:
        reader = av.open(str(source))
    except av.error.FFmpegError as err:
        raise DataError(f"{source} cannot be opened as a video ({err})") from None
    with reader:
        if not reader.streams.video:
            raise DataError(f"{source} holds no video stream")
        video_in = reader.streams.video[0]
        width, height = video_in.codec_context.width, video_in.codec_context.height
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".partial-{target.name}")
        with av.open(str(partial), "w", format=_container(target)) as writer:
            codec, options, pix_fmt = encoder_for(target, width, height)
            rate = video_in.average_rate or video_in.guessed_rate or Fraction(30)
            video_out = writer.add_stream(codec, rate=rate, options=options)
            video_out.width, video_out.height, video_out.pix_fmt = width, height, pix_fmt
            video_out.codec_context.time_base = 1 / Fraction(rate)
            audio = {stream.index: _AudioOut(stream, writer, target) for stream in reader.streams.audio}
            frames = _Frames(translator, video_out, writer, batch_size, Smoother(smoothing))
            with tqdm(total=video_in.frames or None, desc="translate", unit="frame") as bar:
                for packet in reader.demux(video_in, *reader.streams.audio):
                    if packet.stream.index in audio:
                        audio[packet.stream.index].add(packet)
                        continue
                    for frame in packet.decode():
                        bar.update(frames.add(frame))
                bar.update(frames.flush())
            writer.mux(video_out.encode())
            for out in audio.values():
                out.finish()
        partial.replace(target)
    return frames.count


def _container(path: Path) -> str | None:
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".m4v": "mp4"}.get(path.suffix.lower())


class _AudioOut:
    """An audio stream of the input, copied packet for packet; re-encoded as Opus only where the
    container cannot hold its codec (WebM takes Opus and Vorbis alone)."""

    def __init__(self, stream, writer, target: Path) -> None:
        self.writer, self.transcode = writer, target.suffix.lower() == ".webm" and stream.codec_context.name not in (
            "opus", "vorbis")
        if self.transcode:
            self.out = writer.add_stream("libopus", rate=48000)
            self.resampler = av.AudioResampler(format="s16", layout=stream.layout.name, rate=48000)
        else:
            self.out = writer.add_stream_from_template(stream)

    def add(self, packet: av.Packet) -> None:
        if not self.transcode:
            if packet.dts is not None:  # the demuxer's empty flush packet carries none
                packet.stream = self.out
                self.writer.mux(packet)
            return
        for frame in packet.decode():
            for resampled in self.resampler.resample(frame):
                self.writer.mux(self.out.encode(resampled))

    def finish(self) -> None:
        if self.transcode:
            for resampled in self.resampler.resample(None):
                self.writer.mux(self.out.encode(resampled))
            self.writer.mux(self.out.encode())


class _Frames:
    """Decoded frames gathered into batches, translated and encoded in order."""

    def __init__(self, translator: Translator, stream, writer, batch_size: int, smoother: Smoother) -> None:
        self.translator, self.stream, self.writer = translator, stream, writer
        self.batch_size, self.smoother = batch_size, smoother
        self.pending: list[tuple[np.ndarray, int]] = []
        self.count, self.last_pts = 0, -1

    def add(self, frame: av.VideoFrame) -> int:
        """Queue a frame at its time on the output's frame grid (always after the previous one)."""
        slot = round(frame.time / self.stream.codec_context.time_base) if frame.time is not None else self.last_pts + 1
        self.last_pts = max(self.last_pts + 1, slot)
        self.pending.append((frame.to_ndarray(format="rgb24"), self.last_pts))
        return self.flush() if len(self.pending) == self.batch_size else 0

    def flush(self) -> int:
        """Translate what is pending (padded to a full batch, so that every frame is computed
        the same way: a still clip gives identical frames) and encode it."""
        if not self.pending:
            return 0
        images = [pixels for pixels, _ in self.pending]
        padding = [images[-1]] * (self.batch_size - len(images))
        for (pixels, pts), out in zip(self.pending, self.translator.translate(images + padding)):
            frame = av.VideoFrame.from_ndarray(self.smoother(pixels, out), format="rgb24")
            frame.pts, frame.time_base = pts, self.stream.codec_context.time_base
            self.writer.mux(self.stream.encode(frame))
        done, self.pending = len(self.pending), []
        self.count += done
        return done
