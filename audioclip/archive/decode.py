"""Finding recordings in folders and decoding them as a stream: libsndfile first, then FFmpeg (PyAV).

A :class:`RecordingSource` has the stream's source interface (``rate``, ``channels``, ``live``,
``name``, ``overflows``, ``blocks()``), so a recording is windowed and resampled by
:func:`audioclip.stream.runner.run_stream` exactly as ``audioclip-stream --input FILE`` does it.
Blocks are read one at a time: a 10-hour file is labelled in constant memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..audio import AUDIO_EXTENSIONS, AudioFileError
from ..stream.sources import BLOCK_SECONDS

log = logging.getLogger(__name__)

FFMPEG_EXTENSIONS = (".m4a", ".mp4", ".aac", ".opus", ".wma", ".webm", ".mkv", ".mov", ".avi", ".amr", ".3gp")
"""Endings of files decoded by FFmpeg (PyAV) when libsndfile cannot: compressed audio and video's audio track."""

RECORDING_EXTENSIONS = tuple(sorted(set(AUDIO_EXTENSIONS) | set(FFMPEG_EXTENSIONS) | {".opus", ".oga", ".caf"}))
"""File name endings a folder walk takes as recordings (case-insensitive)."""


def find_recordings(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The recordings under ``paths`` (files as given, folders walked recursively), sorted, without duplicates.

    Raises ``ValueError`` naming a path that does not exist, or when no recording is found.
    """
    found: dict[Path, None] = {}
    given = [Path(p) for p in paths]
    if not given:
        raise ValueError("no input given: pass one or more audio files or folders")
    for path in given:
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if Path(name).suffix.lower() in RECORDING_EXTENSIONS and not name.startswith("."):
                        found[Path(root) / name] = None
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no recordings found in {', '.join(map(str, given))} "
                         f"(looked for {', '.join(RECORDING_EXTENSIONS)})")
    return sorted(found, key=str)


class RecordingSource:
    """A recording's first audio stream as float32 ``(frames, channels)`` blocks at its own rate.

    Opened with libsndfile when it can read the file (wav, flac, ogg, mp3, aiff), else with FFmpeg
    through PyAV (m4a, opus, video files' audio). A recording must keep one rate and channel count.
    Errors are :class:`~audioclip.audio.AudioFileError` naming the file.
    """

    live = False
    overflows = 0

    def __init__(self, path: str | os.PathLike, *, block_seconds: float = BLOCK_SECONDS):
        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise AudioFileError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise AudioFileError(f"{self.path}: empty file (0 bytes)")
        self.block_seconds = block_seconds
        self._sf = self._container = None
        try:
            import soundfile

            self._sf = soundfile.SoundFile(str(self.path))
            self.rate, self.channels, self.decoder = float(self._sf.samplerate), self._sf.channels, "libsndfile"
        except (RuntimeError, TypeError, OSError) as sf_error:
            self._open_ffmpeg(sf_error)

    def _open_ffmpeg(self, sf_error: BaseException) -> None:
        import av

        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as e:
            raise AudioFileError(f"{self.path}: neither libsndfile nor FFmpeg can decode it "
                                 f"({_first_line(sf_error)}; {_first_line(e)})") from e
        if not self._container.streams.audio:
            self.close()
            raise AudioFileError(f"{self.path}: no audio stream")
        context = self._container.streams.audio[0].codec_context
        if not context.sample_rate:
            self.close()
            raise AudioFileError(f"{self.path}: its audio stream has no sample rate")
        self.rate, self.channels, self.decoder = float(context.sample_rate), context.layout.nb_channels, "FFmpeg"

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        frames = 0
        try:
            for block, arrival in (self._sf_blocks() if self._sf is not None else self._ffmpeg_blocks()):
                if not np.isfinite(block).all():
                    raise AudioFileError(f"{self.path}: holds NaN or infinite samples (near "
                                         f"{frames / self.rate:.1f} s)")
                frames += len(block)
                yield block, arrival
        finally:
            self.close()

    def _sf_blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        n, frames = max(1, int(round(self.block_seconds * self.rate))), 0
        while True:
            try:
                block = self._sf.read(n, dtype="float32", always_2d=True)
            except RuntimeError as e:
                raise AudioFileError(f"{self.path}: cannot decode frame {frames} ({_first_line(e)})") from e
            if not len(block):
                return
            frames += len(block)
            yield block, 0.0

    def _ffmpeg_blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        import av

        stream = self._container.streams.audio[0]
        converter = None
        pending, frames = [], 0
        try:
            for frame in self._container.decode(stream):
                if not frame.samples:
                    continue
                if frame.sample_rate != self.rate or frame.layout.nb_channels != self.channels:
                    raise AudioFileError(f"{self.path}: the audio changes format mid-file ({self.rate:g} Hz, "
                                         f"{self.channels} ch -> {frame.sample_rate} Hz, "
                                         f"{frame.layout.nb_channels} ch)")
                if converter is None:
                    converter = av.AudioResampler(format="flt", layout=frame.layout.name, rate=frame.sample_rate)
                for converted in converter.resample(frame):
                    pending.append(converted.to_ndarray().reshape(-1, self.channels))
                    frames += converted.samples
                if frames >= self.block_seconds * self.rate:
                    yield np.concatenate(pending), 0.0
                    pending, frames = [], 0
        except av.error.FFmpegError as e:
            raise AudioFileError(f"{self.path}: cannot decode ({_first_line(e)})") from e
        if pending:
            yield np.concatenate(pending), 0.0

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()
        if self._container is not None:
            self._container.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
