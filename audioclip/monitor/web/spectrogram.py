"""Spectrograms of what the model sees: its FBSP front end's dB output, as PNG images made with Pillow.

:class:`FrontEnd` computes the dB bands of FBSP frames with the monitor's own model: the learned transform of
the PyTorch head, or the ``incremental_front.onnx`` graph of an ONNX export (the graph the stream runs). Frames
are the stream's (``FRAME_LENGTH`` samples every ``HOP_LENGTH``), without a window's edge padding.

:class:`LiveSpectrogram` keeps the last ``seconds`` of one source's dB frames while a page listens: the
source's reading thread only copies its audio in (:meth:`~LiveSpectrogram.tap`); :meth:`~LiveSpectrogram.update`
computes the new frames: every other frame of the model's and every third bin (a second of audio is 39 frames of
341 bins: about 1/360 of a 5-s window's work).
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np

from ...model.constants import BAND_HEIGHT, FRAME_LENGTH, HOP_LENGTH, LOG10_FLOOR, N_BANDS, N_FFT, SAMPLE_RATE

log = logging.getLogger(__name__)

BINS = N_BANDS * BAND_HEIGHT  # 1023 kept bins, the trunk's three bands one above the other
DYNAMIC_RANGE_DB = 90.0
"""dB below an image's loudest bin that still get a colour; quieter is black."""

# A dark-to-bright palette (black, purple, red, orange, pale yellow), interpolated to 256 entries.
_ANCHORS = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]],
                    np.float64)
PALETTE = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c])
                    for c in range(3)], axis=1).round().astype(np.uint8)


class FrontEnd:
    """dB of FBSP frames with the classifier's model: ``db(frames [n, FRAME_LENGTH]) -> [BINS, n]`` (low bins first);
    ``db(frames, every=3)``: every third bin only, ``[BINS // 3, n]`` (a third of the transform's work on PyTorch).

    ``classifier``: the monitor's, a PyTorch :class:`~audioclip.model.ZeroShotClassifier` (``.model``) or an
    :class:`~audioclip.export.runtime.OnnxClassifier` (its export's ``incremental_front.onnx``); a
    ``ValueError`` says when neither applies.
    """

    def __init__(self, classifier):
        self._lock = threading.Lock()
        self._kernels: dict[int, tuple] = {}  # every -> (the model's kernel, its rows of every other bin)
        model = getattr(classifier, "model", None)
        if model is not None and hasattr(model, "audio"):
            self._audio, self._graphs = model.audio, None
        elif hasattr(classifier, "incremental_graphs"):
            from ...export.incremental import FRONT_FILE

            graphs = classifier.incremental_graphs()  # ValueError for an export without them
            graphs.session(FRONT_FILE)
            self._audio, self._graphs = None, graphs
        else:
            raise ValueError(f"{type(classifier).__name__} has no FBSP front end to show")

    def db(self, frames: np.ndarray, every: int = 1) -> np.ndarray:
        if not len(frames):
            return np.zeros((len(range(0, BINS, every)), 0), np.float32)
        with self._lock:
            if self._graphs is not None:
                from ...export.incremental import FRONT_FILE, to_reference_scale

                (db,) = self._graphs.run(FRONT_FILE, to_reference_scale(frames)[None])
                return db.reshape(BINS, -1)[::every]
            return self._torch_db(frames, every)

    def _kernel(self, every: int):
        """The transform's rows of every ``every``-th bin (real rows, then imaginary), remade if the weights change."""
        import torch

        kernel = self._audio.fbsp_kernel()
        cached = self._kernels.get(every)
        if cached is None or cached[0] is not kernel:
            rows = torch.arange(0, BINS, every)
            cached = self._kernels[every] = (kernel, kernel[torch.cat((rows, rows + BINS))].contiguous())
        return cached[1]

    def _torch_db(self, frames: np.ndarray, every: int) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from ...model.esresnext import to_reference_scale

        audio = self._audio
        with torch.inference_mode():
            kernel = audio.fbsp_kernel() if every == 1 else self._kernel(every)
            x = to_reference_scale(torch.from_numpy(np.array(frames, np.float32)))  # a copy: frames is a view
            pad = (N_FFT - FRAME_LENGTH) // 2
            framed = F.pad(x * audio.window, (pad, N_FFT - FRAME_LENGTH - pad))
            re, im = F.linear(framed, kernel).chunk(2, dim=-1)  # [n, bins] each
            power = re * re + im * im
            power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_FLOOR))
            return (10.0 * torch.log10(power)).T.contiguous().numpy()


LIVE_STEP = 2 * HOP_LENGTH
"""The live spectrogram shows every other frame of the model's (25.4 ms apart) and every third bin (341 of 1023):
a sixth of the work, and a 10-s image of 393 x 341 pixels, about what a page gives it."""
LIVE_EVERY = 3


def frames_of(audio: np.ndarray, step: int = HOP_LENGTH) -> np.ndarray:
    """The whole FBSP frames of ``audio`` ``[T]`` every ``step`` samples, ``[n, FRAME_LENGTH]`` (a view)."""
    if len(audio) < FRAME_LENGTH:
        return np.zeros((0, FRAME_LENGTH), np.float32)
    return np.lib.stride_tricks.sliding_window_view(audio, FRAME_LENGTH)[::step]


def render_png(db: np.ndarray, *, width: int | None = None) -> bytes:
    """dB ``[BINS, frames]`` (three bins per row: their loudest) or ``[BINS // 3, frames]`` (every third bin) as a
    PNG of 341 rows: time left to right, low bins at the bottom."""
    if len(db) == BINS:
        db = db.reshape(BINS // 3, 3, -1).max(axis=1)
    rows = db[::-1]  # highest bins on top
    if width is not None and rows.shape[1] > width:  # long clips: the loudest of each group of columns
        step = int(np.ceil(rows.shape[1] / width))
        cut = rows.shape[1] // step * step
        rows = rows[:, :cut].reshape(rows.shape[0], -1, step).max(axis=2)
    from PIL import Image

    top = float(rows.max()) if rows.size else 0.0
    scaled = np.clip((rows - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0) * 255.0
    image = Image.fromarray(np.ascontiguousarray(scaled.astype(np.uint8)), mode="L").convert("P")
    image.putpalette(PALETTE.tobytes())
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


class LiveSpectrogram:
    """The last ``seconds`` of one source's dB frames, computed as audio comes (see the module)."""

    def __init__(self, front: FrontEnd, seconds: float = 10.0):
        self.front = front
        self.frames = int(round(seconds * SAMPLE_RATE / LIVE_STEP))
        self.db = np.full((len(range(0, BINS, LIVE_EVERY)), 0), -np.inf, np.float32)
        self.version = 0
        self._pending: list[np.ndarray] = []
        self._carry = np.zeros(0, np.float32)  # samples after the last whole frame's start
        self._end: float | None = None  # stream second after the last sample taken
        self._lock = threading.Lock()

    def tap(self, mono: np.ndarray, end_s: float) -> None:
        """A block of the source's audio (44.1 kHz mono) ending at stream second ``end_s``; only copies."""
        start = end_s - len(mono) / SAMPLE_RATE
        with self._lock:
            if self._end is not None and abs(start - self._end) > 1.0 / SAMPLE_RATE * 2:
                self._pending = [None]  # a gap: frames start afresh after it
            self._pending.append(np.array(mono, np.float32))
            self._end = end_s
            if sum(len(p) for p in self._pending if p is not None) > self.frames * LIVE_STEP * 2:
                self._pending = [None, self._pending[-1]]  # nobody updated for long: keep the newest

    def update(self) -> bool:
        """Compute the frames of the audio tapped since the last call; True when there are new ones."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return False
        parts = [self._carry]
        for block in pending:
            if block is None:  # a gap (or audio from before the page left): start afresh
                parts, self.db = [], self.db[:, :0]
            else:
                parts.append(block)
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        frames = frames_of(audio, LIVE_STEP)
        self._carry = audio[len(frames) * LIVE_STEP:] if len(frames) else audio
        if not len(frames):
            return False
        new = self.front.db(frames[-self.frames:], LIVE_EVERY)
        self.db = np.concatenate((self.db, new), axis=1)[:, -self.frames:]
        self.version += 1
        return True

    def png(self) -> bytes:
        return render_png(self.db)


def clip_spectrogram(front: FrontEnd, clip: Path, cache: Path, *, width: int = 1200) -> Path:
    """The PNG of ``clip``'s dB frames in ``cache`` (made once, remade when the clip is newer)."""
    from ...audio import load_audio
    from ...files import atomic_write

    if cache.is_file() and cache.stat().st_mtime >= clip.stat().st_mtime:
        return cache
    audio = load_audio(clip)
    png = render_png(front.db(frames_of(audio)), width=width)
    atomic_write(cache, lambda f: f.write(png), durable=False)  # a cache: made again if lost
    return cache
