"""Which columns overlapping windows share, and the bookkeeping that reuses them (no torch needed).

Consecutive windows of a stream shifted by a multiple of ``STRIDE_SAMPLES`` (8 FBSP hops: the
stride of the trunk up to layer2) see the same feature-map columns, except near their edges,
where each window's zero padding reaches in. :class:`OverlapEncoder` keeps the previous window's
dB frames, stem, layer1 and layer2 columns, takes the inner ones over (shifted), and computes per
window only the columns that are new at the right end and the edge columns that the padding
touches, each stage from the stage below on a slice just wide enough to be exact. layer3, layer4
and the reduction run on the whole window's layer2 output, as in the model.

The arithmetic is a backend's: :class:`audioclip.model.incremental.IncrementalEncoder` runs the
stages with PyTorch, :class:`audioclip.export.incremental.OnnxIncrementalEncoder` with the stage
graphs of an ONNX export. Which columns a window's edges touch (:func:`stage_edges`) follows from
the receptive fields of the stages; ``tests/test_incremental.py`` compares every cached column
with full windows and shows that the widths are the smallest that are exact.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .constants import FRAME_LENGTH, HOP_LENGTH, STRIDE_SAMPLES
from .frames import frame_count, frame_padding

STRIDE_FRAMES = STRIDE_SAMPLES // HOP_LENGTH
"""8 FBSP frames per layer2 column: the stem's stride (4) times layer2's (2)."""

STAGES = ("db", "stem", "layer1", "layer2")

GFLOP = {"db": 3.3, "stem": 0.63, "layer1": 3.69, "layer2": 6.39, "tail": 14.72}
"""Arithmetic of a 5-s window of the full-size head by part (../shared/NOTES.md), for ``OverlapEncoder.cost``."""

MIN_GEMM_ROWS = 16
"""Fewest frames per matrix product of the front end (``IncrementalEncoder`` checks which counts are exact)."""


@dataclass(frozen=True)
class Stage:
    """One shared stage in time: output column ``j`` reads input columns ``[j s - left, j s + right]``."""

    name: str
    stride: int
    left: int
    right: int


def trunk_blocks(head) -> tuple[int, int]:
    """``(blocks of layer1, blocks of layer2)`` of an audio head (anything with ``layer1``, ``layer2``), or
    the pair itself."""
    if hasattr(head, "layer1"):
        return len(head.layer1), len(head.layer2)
    blocks1, blocks2 = head
    return int(blocks1), int(blocks2)


def _ceil_half(n: int) -> int:
    return (n + 1) // 2


def stage_lengths(window_samples: int) -> dict[str, int]:
    """Columns of each shared stage in a window of ``window_samples``."""
    frames = frame_count(window_samples)
    stem = _ceil_half(_ceil_half(frames))  # conv 7 / 2 / 3, max pool 3 / 2 / 1
    return {"db": frames, "stem": stem, "layer1": stem, "layer2": _ceil_half(stem)}


def trunk_stages(head, window_samples: int) -> list[Stage]:
    """The stem, layer1 and layer2 of windows of ``window_samples`` as :class:`Stage` s.

    ``head``: the audio head or its :func:`trunk_blocks`. stem: conv 7 / 2 / 3 then max pool
    3 / 2 / 1 read frames ``[4 j - 5, 4 j + 5]``. layer1: each block's 3 x 3 convolution reaches
    one column further (att1's is 1 wide in time). layer2: the first block's 3 / 2 / 1
    convolution, then 2 columns per block; att2 pools 2 columns to 1 (``[2 j, 2 j + 1]``, or
    ``[2 j - 1, 2 j + 1]`` when layer1 has an odd length) and convolves 5 wide.
    """
    blocks1, blocks2 = trunk_blocks(head)
    reach2 = 2 * blocks2 - 1
    gate_left = 5 if stage_lengths(window_samples)["layer1"] % 2 else 4
    return [Stage("stem", 4, 5, 5), Stage("layer1", 1, blocks1, blocks1),
            Stage("layer2", 2, max(reach2, gate_left), max(reach2, 5))]


def stage_edges(head, window_samples: int) -> dict[str, tuple[int, int]]:
    """``{stage: (left, right)}``: columns of each stage that a window's edges make differ from the stream.

    A dB frame differs when it reaches into the window's zero padding (the first and the last);
    a column of a later stage when its receptive field reaches a differing column or the padding.
    """
    lengths = stage_lengths(window_samples)
    edges = {"db": (1, 1)}
    below, n_below = "db", lengths["db"]
    for stage in trunk_stages(head, window_samples):
        n = lengths[stage.name]
        left_bad, right_bad = edges[below]
        left = sum(1 for j in range(n) if j * stage.stride - stage.left < left_bad)
        right = sum(1 for j in range(n) if j * stage.stride + stage.right >= n_below - right_bad)
        edges[stage.name] = (left, right)
        below, n_below = stage.name, n
    return edges


def pool_params(n: int, m: int) -> tuple[int, int, int]:
    """``adaptive_max_pool2d``'s exact fixed-window form from length ``n`` to ``m``: ``(kernel, stride, padding)``."""
    if n == m:
        return 1, 1, 0
    if n == 2 * m:
        return 2, 2, 0
    if n == 2 * m - 1:
        return 3, 2, 1
    raise ValueError(f"no exact fixed-window pooling from {n} to {m} columns")


class OverlapEncoder:
    """One source's audio embeddings of overlapping windows, equal to whole windows' (a backend computes).

    ``head``: the audio head or its :func:`trunk_blocks`. ``window_samples``: the window length
    (any length the model takes). :meth:`encode` takes a window and the stream sample where it
    starts; when it starts a multiple of :data:`STRIDE_SAMPLES` after the previous window and the
    overlapping samples are the same, the shared columns are reused, otherwise (the first window,
    a gap, a reconnect, a hop that is not aligned) the window is computed whole. :meth:`push`
    feeds hop after hop instead. Memory: one window's samples, dB frames and stem, layer1, layer2
    columns.

    A backend gives the arrays (``_as_array``, ``_cat``, ``_equal``) and the stages (``_db_ends``,
    ``_run``, ``_tail``); ``edges`` overrides :func:`stage_edges` (tests show that narrower ones
    are not exact).
    """

    def __init__(self, head, window_samples: int, *, hop_samples: int | None = None,
                 edges: dict[str, tuple[int, int]] | None = None):
        if isinstance(window_samples, bool) or not isinstance(window_samples, int) or window_samples <= FRAME_LENGTH:
            raise ValueError(f"window_samples must be a whole number above {FRAME_LENGTH}, got {window_samples!r}")
        if hop_samples is not None and (hop_samples <= 0 or hop_samples % STRIDE_SAMPLES):
            raise ValueError(f"hop_samples must be a positive multiple of {STRIDE_SAMPLES} samples, got {hop_samples}")
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.stages = trunk_stages(head, window_samples)
        self.lengths = stage_lengths(window_samples)
        self.edges = stage_edges(head, window_samples) if edges is None else dict(edges)
        self._pad = frame_padding(window_samples)
        # frame counts a backend computes the front end on (``_db_first``): any from MIN_GEMM_ROWS on
        self._gemm_rows = tuple(range(MIN_GEMM_ROWS, self.lengths["db"] + 1))
        self.incremental_windows = 0
        self.full_windows = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next window is computed whole (after a gap or a reconnect)."""
        self._start: int | None = None
        self._samples = None
        self._cache: dict = {}
        self._pushed = None
        self._pushed_start = 0

    # -- the public calls ---------------------------------------------------------------------

    def encode(self, window, start: int):
        """Embedding ``[1, D]`` (not normalised) of ``window`` ([T] floats in [-1, 1]) from stream sample ``start``."""
        x = self._samples_of(window)
        with self._computing():
            shift = self._shift(x, start)
            cache = self._full(x) if shift is None else self._incremental(x, shift)
            self._cache, self._samples, self._start = cache, x, start
            return self._tail(cache["layer2"])

    def push(self, samples):
        """Feed the next ``hop_samples`` of the stream (the first call may bring a whole window).

        Returns the embedding ``[1, D]`` of the window that ends with these samples, or None while
        fewer than ``window_samples`` have come since the start or the last :meth:`reset`.
        """
        if self.hop_samples is None:
            raise ValueError("push() needs hop_samples: pass it to the encoder, or call encode(window, start)")
        x = self._samples_of(samples, exact_length=False)
        self._pushed = x if self._pushed is None else self._cat([self._pushed, x])[-self.window_samples:]
        self._pushed_start += len(x)
        if len(self._pushed) < self.window_samples:
            return None
        return self.encode(self._pushed, self._pushed_start - self.window_samples)

    def cost(self, n: int) -> float:
        """Arithmetic of a window ``n`` layer2 columns after the previous one, as a fraction of a whole
        window's (from the full-size head's costs by part, :data:`GFLOP`; 1.0 when it is computed whole)."""
        if self._whole_shift(n * STRIDE_SAMPLES):
            return 1.0
        shift = n * STRIDE_FRAMES
        left, first = self._new_columns("db", shift)
        done = {"db": left + self.lengths["db"] - self._db_first(left, first)}
        for stage in self.stages:
            shift //= stage.stride
            left, first = self._new_columns(stage.name, shift)
            lo, hi = self._slice(stage, 0, left)
            widths = hi - lo
            lo, hi = self._slice(stage, first, self.lengths[stage.name])
            done[stage.name] = (widths + hi - lo) / stage.stride  # in this stage's columns
        total = sum(GFLOP.values())
        shared = sum(GFLOP[name] * min(done[name] / self.lengths[name], 1.0) for name in STAGES)
        return (shared + GFLOP["tail"]) / total

    def widths(self) -> dict[str, tuple[int, int]]:
        """Fewest and most input columns each stage runs on (``"front"``: frames), over whole windows and
        every shift that shares columns: the shapes a stage graph meets (TensorRT's profiles)."""
        seen = {"front": {self.lengths["db"]}, "stem": {self.lengths["db"]}, "layer1": {self.lengths["stem"]},
                "layer2": {self.lengths["layer1"]}}
        for n in range(1, self.lengths["layer2"]):
            if self._whole_shift(n * STRIDE_SAMPLES):
                continue
            shift = n * STRIDE_FRAMES
            left, first = self._new_columns("db", shift)
            seen["front"].add(left + self.lengths["db"] - first)
            for stage in self.stages:
                shift //= stage.stride
                left, first = self._new_columns(stage.name, shift)
                for a, b in ((0, left), (first, self.lengths[stage.name])):
                    if b > a:
                        lo, hi = self._slice(stage, a, b)
                        seen[stage.name].add(hi - lo)
        return {name: (min(w), max(w)) for name, w in seen.items()}

    # -- the bookkeeping -----------------------------------------------------------------------

    def _samples_of(self, window, exact_length: bool = True):
        x = self._as_array(window)
        if x.ndim != 1 or not _is_floating(x):
            raise ValueError(f"expected one mono signal [T] of floats, got {tuple(x.shape)} {x.dtype}")
        if exact_length and len(x) != self.window_samples:
            raise ValueError(f"expected a window of {self.window_samples} samples, got {len(x)}")
        if not self._finite(x):
            raise ValueError("samples must be finite (no NaN or infinity)")
        return x

    def _shift(self, x, start: int) -> int | None:
        """Layer2 columns between the previous window and this one, or None when they share nothing exactly."""
        if self._start is None:
            return None
        shift = start - self._start
        if self._whole_shift(shift):
            return None
        if not self._equal(self._samples[shift:], x[:-shift]):  # a discontinuity: nothing is shared
            return None
        return shift // STRIDE_SAMPLES

    def _whole_shift(self, shift: int) -> bool:
        """Whether a window ``shift`` samples after the previous one shares no column exactly."""
        if shift <= 0 or shift % STRIDE_SAMPLES or shift >= self.window_samples:
            return True
        left, right = self.edges["layer2"]
        return left + shift // STRIDE_SAMPLES + right >= self.lengths["layer2"]

    def _full(self, x) -> dict:
        self.full_windows += 1
        cache = {"db": self._db_ends(x, 0, 0)[1]}
        below = cache["db"]
        for stage in self.stages:
            below = cache[stage.name] = self._run(stage, below)
        return cache

    def _incremental(self, x, n: int) -> dict:
        """This window's stage outputs from the previous window's, ``n`` layer2 columns on."""
        self.incremental_windows += 1
        shift = n * STRIDE_FRAMES
        left, first = self._new_columns("db", shift)
        cache = {"db": self._join("db", shift, *self._db_ends(x, left, first))}
        below = cache["db"]
        for stage in self.stages:
            shift //= stage.stride
            left, first = self._new_columns(stage.name, shift)
            ends = self._columns(stage, below, 0, left), self._columns(stage, below, first, self.lengths[stage.name])
            below = cache[stage.name] = self._join(stage.name, shift, *ends)
        return cache

    def _new_columns(self, name: str, shift: int) -> tuple[int, int]:
        """``(left, first)``: in a window ``shift`` columns on, stage ``name``'s columns ``[0, left)`` and
        ``[first, end)`` are computed; those between were inner columns of the previous window."""
        left, right = self.edges[name]
        return left, self.lengths[name] - right - shift

    def _db_first(self, left: int, first: int) -> int:
        """First of the frames computed on the right when frames ``[first, end)`` are new: more than
        ``first`` when a backend computes one of the frame counts ``_gemm_rows`` at once (the
        smallest of them that holds the new frames, or the whole window)."""
        end = self.lengths["db"]
        needed = left + end - first
        rows = min((r for r in self._gemm_rows if r >= needed), default=end)
        return max(min(first, end - (rows - left)), left)

    def _join(self, name: str, shift: int, head, tail):
        left, right = self.edges[name]
        kept = self._cache[name][..., left + shift:self.lengths[name] - right]
        return self._cat([t for t in (head, kept, tail) if t is not None])

    def _columns(self, stage: Stage, below, first: int, end: int):
        """Columns ``[first, end)`` of ``stage`` (None if none) from the window's columns ``below``,
        computed on a slice just wide enough to be exact."""
        if end <= first:
            return None
        lo, hi = self._slice(stage, first, end)
        out = self._run(stage, below[..., lo:hi])
        offset = lo // stage.stride
        return out[..., first - offset:end - offset]

    def _slice(self, stage: Stage, first: int, end: int) -> tuple[int, int]:
        """Input columns ``[lo, hi)`` from which ``stage``'s columns ``[first, end)`` come out exact."""
        lo = max(first * stage.stride - stage.left, 0)
        lo -= lo % stage.stride  # keep the slice on the stage's grid
        below = self.lengths[STAGES[STAGES.index(stage.name) - 1]]
        return lo, min((end - 1) * stage.stride + stage.right + 1, below)

    def _gate_pooling(self, stage: Stage) -> tuple[int, int, int]:
        """The time pooling of ``stage``'s attention gate in a whole window (it depends on the window's length)."""
        below = {"layer1": "stem", "layer2": "layer1"}[stage.name]
        return pool_params(self.lengths[below], self.lengths[stage.name])

    # -- what a backend gives --------------------------------------------------------------------

    def _computing(self):
        return contextlib.nullcontext()

    def _as_array(self, window):
        """``window`` as the backend's array: int16 scaled to floats in [-1, 1], floats as float32, others kept."""
        raise NotImplementedError

    @staticmethod
    def _finite(x) -> bool:
        raise NotImplementedError

    def _cat(self, parts: list):
        raise NotImplementedError

    @staticmethod
    def _equal(a, b) -> bool:
        raise NotImplementedError

    def _db_ends(self, x, left: int, first: int):
        """dB frames ``[0, left)`` (None if none) and ``[first, end)`` of the window."""
        raise NotImplementedError

    def _run(self, stage: Stage, x):
        """``stage`` over columns ``x`` (a window or a slice of one), zero padded at both ends as the model pads."""
        raise NotImplementedError

    def _tail(self, layer2):
        """layer3, layer4, the reduction and the projection of a whole window's layer2 output."""
        raise NotImplementedError


def _is_floating(x) -> bool:
    if isinstance(x, np.ndarray):
        return np.issubdtype(x.dtype, np.floating)
    return bool(getattr(x, "is_floating_point", lambda: False)())
