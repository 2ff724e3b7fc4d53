"""A video in, a video out: every frame translated in batches, with the input's frame count,
frame rate, size and frame times; audio streams copied as they are (re-encoded only where
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

from cyclegan.errors import DataError, UserError
from cyclegan.translate.core import Translator

VIDEO_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
TICKS_PER_FRAME = 100  # the output's time base: 1/100 of the nominal frame period
# audio codecs each container takes as they are (besides PCM in MP4 and MOV); None: any
COPYABLE_AUDIO = {".webm": {"opus", "vorbis"}, ".mp4": {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"},
                  ".m4v": {"aac", "mp3", "alac", "ac3", "eac3"}, ".mov": {"aac", "mp3", "alac", "ac3", "eac3"}}
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
    """Translate every frame of `source` into `target` (written under a temporary name, renamed when
    complete); returns the number of frames."""
    if {translator.in_channels, translator.out_channels} - {1, 3}:
        raise UserError(f"a video has colour or grey frames, but this generator translates {translator.in_channels} "
                        f"-> {translator.out_channels} bands")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".partial-{target.name}")
    try:
        with av.open(str(source)) as reader, av.open(str(partial), "w", format=_container(target)) as writer:
            count = _translate_streams(translator, reader, writer, target, batch_size, smoothing)
    except av.error.FFmpegError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"{source} cannot be translated as a video ({err})") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if count == 0:
        partial.unlink(missing_ok=True)
        raise DataError(f"{source} holds no frame that could be decoded")
    partial.replace(target)
    return count


def _translate_streams(translator: Translator, reader, writer, target: Path, batch_size: int, smoothing: float) -> int:
    if not reader.streams.video:
        raise DataError(f"{reader.name} holds no video stream")
    video_in = reader.streams.video[0]
    width, height = video_in.codec_context.width, video_in.codec_context.height
    codec, options, pix_fmt = encoder_for(target, width, height)
    rate = video_in.average_rate or video_in.guessed_rate or Fraction(30)
    video_out = writer.add_stream(codec, rate=rate, options=options)
    video_out.width, video_out.height, video_out.pix_fmt = width, height, pix_fmt
    video_out.codec_context.time_base = 1 / (Fraction(rate) * TICKS_PER_FRAME)
    audio = {stream.index: _AudioOut(stream, writer, target) for stream in reader.streams.audio}
    frames = _Frames(translator, video_out, writer, batch_size, Smoother(smoothing), rate, video_in.time_base)
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
    return frames.count


def _container(path: Path) -> str | None:
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".m4v": "mp4"}.get(path.suffix.lower())


class _AudioOut:
    """An audio stream of the input, copied packet for packet; re-encoded (Opus in WebM, AAC in
    MP4 and MOV) only where the container cannot hold its codec. Matroska holds any."""

    def __init__(self, stream, writer, target: Path) -> None:
        suffix, name = target.suffix.lower(), stream.codec_context.name
        kept, pcm = COPYABLE_AUDIO.get(suffix), suffix != ".webm" and name.startswith("pcm_")
        self.writer, self.transcode = writer, kept is not None and name not in kept and not pcm
        if self.transcode:
            codec = "libopus" if suffix == ".webm" else "aac"
            self.out = writer.add_stream(codec, rate=48000)
            self.resampler = av.AudioResampler(format="s16" if codec == "libopus" else "fltp", layout=stream.layout.name,
                                               rate=48000)
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

    def __init__(self, translator: Translator, stream, writer, batch_size: int, smoother: Smoother, rate: Fraction,
                 time_base: Fraction | None) -> None:
        self.translator, self.stream, self.writer = translator, stream, writer
        self.batch_size, self.smoother, self.rate = batch_size, smoother, float(rate)
        # how far from the nominal frame grid a timestamp may be and still sit on it: the input's
        # timestamp resolution (Matroska rounds to milliseconds), in frame periods
        self.snap = max(0.01, float(time_base or 0) * self.rate)
        self.pending: list[tuple[np.ndarray, int]] = []
        self.count, self.last_pts = 0, -1

    def add(self, frame: av.VideoFrame) -> int:
        """Queue a frame at its own time: on the nominal frame grid where it sits on it (so a constant
        rate stays exact), elsewhere to 1/100 of a frame (variable rates keep their timing)."""
        if frame.time is None:
            pts = self.last_pts + TICKS_PER_FRAME
        else:
            periods = frame.time * self.rate
            on_grid = abs(periods - round(periods)) <= self.snap
            pts = round((round(periods) if on_grid else periods) * TICKS_PER_FRAME)
        self.last_pts = max(self.last_pts + 1, pts)
        if self.translator.in_channels == 1:  # a greyscale generator takes each frame's luma
            self.pending.append((frame.to_ndarray(format="gray")[:, :, None], self.last_pts))
        else:
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
            smoothed = self.smoother(pixels, out)
            frame = av.VideoFrame.from_ndarray(np.repeat(smoothed, 3 // smoothed.shape[2], axis=2), format="rgb24")
            frame.pts, frame.time_base = pts, self.stream.codec_context.time_base
            self.writer.mux(self.stream.encode(frame))
        done, self.pending = len(self.pending), []
        self.count += done
        return done
