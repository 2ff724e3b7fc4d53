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
from cyclegan.io.files import atomic_path
from cyclegan.io.samples import Sample, restore
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
                    smoothing: float = 0.0) -> tuple[int, str | None]:
    """Translate every frame of `source` into `target` (written under a temporary name, renamed when
    complete); returns the number of frames, and a warning when frames are missing: a cut-off or
    damaged file is translated up to where it stops decoding, and said to be short."""
    if {translator.in_channels, translator.out_channels} - {1, 3}:
        raise UserError(f"a video has colour or grey frames, but this generator translates {translator.in_channels} "
                        f"-> {translator.out_channels} bands")
    try:
        with atomic_path(target) as partial:
            with av.open(str(source)) as reader, av.open(str(partial), "w", format=_container(target)) as writer:
                count, declared, stopped = _translate_streams(translator, reader, writer, target, batch_size, smoothing)
            if count == 0:
                raise DataError(f"{source} holds no frame that could be decoded")
    except av.error.FFmpegError as err:
        raise DataError(f"{source} cannot be translated as a video ({err})") from None
    if count >= declared and stopped is None:
        return count, None
    said = f"the container says {declared} frame(s), " if declared > count else ""
    why = f" (decoding stopped: {stopped})" if stopped else ""
    return count, f"{source}: {said}{count} could be decoded{why}; the file is cut off or damaged, {target} holds those"


def _declared_frames(stream, rate: Fraction) -> int:
    """The frame count the container states, or the video stream's own duration times the frame
    rate; 0 when it says neither (Matroska and WebM state neither per stream), and then only a
    decoding error says that a file is cut off. The container's duration is no measure: it spans
    the audio too, which may run on past the last frame."""
    if stream.frames:
        return stream.frames
    return round(float(stream.duration * stream.time_base) * float(rate)) if stream.duration and stream.time_base else 0


def _translate_streams(translator: Translator, reader, writer, target: Path, batch_size: int,
                       smoothing: float) -> tuple[int, int, str | None]:
    """(frames written, frames the container states, why decoding stopped early or None)."""
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
    declared, stopped = _declared_frames(video_in, rate), None
    with tqdm(total=declared or None, desc="translate", unit="frame") as bar:
        try:
            for packet in reader.demux(video_in, *reader.streams.audio):
                if packet.stream.index in audio:
                    audio[packet.stream.index].add(packet)
                    continue
                for frame in packet.decode():
                    bar.update(frames.add(frame))
        except av.error.InvalidDataError as err:  # a cut-off file: what decoded so far is kept, and said
            if not (frames.count or frames.pending):
                raise  # no frame at all: no video to speak of
            stopped = getattr(err, "strerror", None) or str(err)
        bar.update(frames.flush())
    writer.mux(video_out.encode())
    for out in audio.values():
        out.finish()
    return frames.count, declared, stopped


def _container(path: Path) -> str | None:
    """The muxer, by the target's suffix (the file is written under a temporary name that has none)."""
    return {".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".m4v": "mp4", ".mp4": "mp4",
            ".avi": "avi"}.get(path.suffix.lower())


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
        self.pending: list[tuple[np.ndarray, Sample, int]] = []
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
        # a greyscale generator takes each frame's luma; frames are read as images are
        pixels = frame.to_ndarray(format="gray" if self.translator.in_channels == 1 else "rgb24").reshape(
            frame.height, frame.width, -1)
        self.pending.append((pixels, self.translator.read(pixels, f"frame {self.count + len(self.pending)}"),
                             self.last_pts))
        return self.flush() if len(self.pending) == self.batch_size else 0

    def flush(self) -> int:
        """Translate what is pending (padded to a full batch, so that every frame is computed
        the same way: a still clip gives identical frames) and encode it."""
        if not self.pending:
            return 0
        images = [sample.array() for _, sample, _ in self.pending]
        padding = [images[-1]] * (self.batch_size - len(images))
        for (pixels, sample, pts), out in zip(self.pending, self.translator.translate(images + padding)):
            smoothed = self.smoother(pixels, restore(out, sample, self.translator.output))
            frame = av.VideoFrame.from_ndarray(np.repeat(smoothed, 3 // smoothed.shape[2], axis=2), format="rgb24")
            frame.pts, frame.time_base = pts, self.stream.codec_context.time_base
            self.writer.mux(self.stream.encode(frame))
        done, self.pending = len(self.pending), []
        self.count += done
        return done
