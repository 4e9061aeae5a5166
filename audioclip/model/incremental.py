"""Exact incremental encoding of overlapping windows: one source's front end, stem, layer1 and layer2 are shared.

Consecutive windows of a stream shifted by a multiple of ``STRIDE_SAMPLES`` (8 FBSP hops: the
stride of the trunk up to layer2) see the same feature-map columns, except near their edges,
where each window's zero padding reaches in. :class:`IncrementalEncoder` keeps the previous
window's dB frames, stem, layer1 and layer2 columns, takes the inner ones over (shifted), and
computes per window only the columns that are new at the right end and the edge columns that
the padding touches, each stage from the stage below on a slice just wide enough to be exact.
layer3, layer4 and the reduction run on the whole window's layer2 output, as in the model.

Which columns a window's edges touch (:func:`stage_edges`) follows from the receptive fields of
the stages; ``tests/test_incremental.py`` compares every cached column with full windows and
shows that the widths are the smallest that are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .constants import FRAME_LENGTH, HOP_LENGTH, INT16_SCALE, N_FFT, STRIDE_SAMPLES
from .esresnext import Attention2d, ESResNeXtFBSP, to_reference_scale
from .fbsp import frame_count, frame_padding, power_to_db

STRIDE_FRAMES = STRIDE_SAMPLES // HOP_LENGTH
"""8 FBSP frames per layer2 column: the stem's stride (4) times layer2's (2)."""


STAGES = ("db", "stem", "layer1", "layer2")

GFLOP = {"db": 3.3, "stem": 0.63, "layer1": 3.69, "layer2": 6.39, "tail": 14.72}
"""Arithmetic of a 5-s window of the full-size head by part (../shared/NOTES.md), for ``IncrementalEncoder.cost``."""

MIN_GEMM_ROWS = 16
"""Frames per matrix product of the front end (see :meth:`IncrementalEncoder._db_ends`)."""


@dataclass(frozen=True)
class Stage:
    """One shared stage in time: output column ``j`` reads input columns ``[j s - left, j s + right]``."""

    name: str
    stride: int
    left: int
    right: int


def _ceil_half(n: int) -> int:
    return (n + 1) // 2


def stage_lengths(window_samples: int) -> dict[str, int]:
    """Columns of each shared stage in a window of ``window_samples``."""
    frames = frame_count(window_samples)
    stem = _ceil_half(_ceil_half(frames))  # conv 7 / 2 / 3, max pool 3 / 2 / 1
    return {"db": frames, "stem": stem, "layer1": stem, "layer2": _ceil_half(stem)}


def trunk_stages(head: ESResNeXtFBSP, window_samples: int) -> list[Stage]:
    """The stem, layer1 and layer2 of windows of ``window_samples`` as :class:`Stage` s.

    stem: conv 7 / 2 / 3 then max pool 3 / 2 / 1 read frames ``[4 j - 5, 4 j + 5]``. layer1: each
    block's 3 x 3 convolution reaches one column further (att1's is 1 wide in time). layer2: the
    first block's 3 / 2 / 1 convolution, then 2 columns per block; att2 pools 2 columns to 1
    (``[2 j, 2 j + 1]``, or ``[2 j - 1, 2 j + 1]`` when layer1 has an odd length) and convolves 5 wide.
    """
    blocks1, blocks2 = len(head.layer1), len(head.layer2)
    reach2 = 2 * blocks2 - 1
    gate_left = 5 if stage_lengths(window_samples)["layer1"] % 2 else 4
    return [Stage("stem", 4, 5, 5), Stage("layer1", 1, blocks1, blocks1),
            Stage("layer2", 2, max(reach2, gate_left), max(reach2, 5))]


def stage_edges(head: ESResNeXtFBSP, window_samples: int) -> dict[str, tuple[int, int]]:
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


def _pool_params(n: int, m: int) -> tuple[int, int, int]:
    """``adaptive_max_pool2d``'s exact fixed-window form from length ``n`` to ``m`` (see esresnext)."""
    if n == m:
        return 1, 1, 0
    if n == 2 * m:
        return 2, 2, 0
    if n == 2 * m - 1:
        return 3, 2, 1
    raise ValueError(f"no exact fixed-window pooling from {n} to {m} columns")


class IncrementalEncoder:
    """One source's audio embeddings of overlapping windows, equal to ``encode_audio`` on each window.

    ``model``: an ``AudioCLIP`` (its ``audio`` head is used) or the head itself, in eval mode.
    ``window_samples``: the window length (any length the model takes). :meth:`encode` takes a
    window and the stream sample where it starts; when it starts a multiple of
    :data:`STRIDE_SAMPLES` after the previous window and the overlapping samples are the same,
    the shared columns are reused, otherwise (the first window, a gap, a reconnect, a hop that is
    not aligned) the window is computed whole. :meth:`push` feeds hop after hop instead.
    Memory: one window's samples, dB frames and stem, layer1, layer2 columns.

    ``edges`` overrides :func:`stage_edges` (tests show that narrower ones are not exact).
    """

    def __init__(self, model, window_samples: int, *, hop_samples: int | None = None,
                 edges: dict[str, tuple[int, int]] | None = None):
        head = getattr(model, "audio", model)
        if not isinstance(head, ESResNeXtFBSP):
            raise ValueError(f"model must be an AudioCLIP or its ESResNeXtFBSP audio head, got {type(model).__name__}")
        if head.training:
            raise ValueError("the model is in training mode (batch norm would use batch statistics): call model.eval()")
        if isinstance(window_samples, bool) or not isinstance(window_samples, int) or window_samples <= FRAME_LENGTH:
            raise ValueError(f"window_samples must be a whole number above {FRAME_LENGTH}, got {window_samples!r}")
        if hop_samples is not None and (hop_samples <= 0 or hop_samples % STRIDE_SAMPLES):
            raise ValueError(f"hop_samples must be a positive multiple of {STRIDE_SAMPLES} samples, got {hop_samples}")
        self.head = head
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.stages = trunk_stages(head, window_samples)
        self.lengths = stage_lengths(window_samples)
        self.edges = stage_edges(head, window_samples) if edges is None else dict(edges)
        self._pad = frame_padding(window_samples)
        self.incremental_windows = 0
        self.full_windows = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next window is computed whole (after a gap or a reconnect)."""
        self._start: int | None = None
        self._samples: torch.Tensor | None = None
        self._cache: dict[str, torch.Tensor] = {}
        self._pushed: torch.Tensor | None = None
        self._pushed_start = 0

    # -- the public calls ---------------------------------------------------------------------

    def encode(self, window, start: int) -> torch.Tensor:
        """Embedding ``[1, D]`` (not normalised) of ``window`` ([T] floats in [-1, 1]) from stream sample ``start``."""
        x = self._as_samples(window)
        with torch.inference_mode():
            shift = self._shift(x, start)
            cache = self._full(x) if shift is None else self._incremental(x, shift)
            self._cache, self._samples, self._start = cache, x, start
            return self._tail(cache["layer2"])

    def push(self, samples) -> torch.Tensor | None:
        """Feed the next ``hop_samples`` of the stream (the first call may bring a whole window).

        Returns the embedding ``[1, D]`` of the window that ends with these samples, or None while
        fewer than ``window_samples`` have come since the start or the last :meth:`reset`.
        """
        if self.hop_samples is None:
            raise ValueError("push() needs hop_samples: pass it to IncrementalEncoder, or call encode(window, start)")
        x = self._as_samples(samples, exact_length=False)
        self._pushed = x if self._pushed is None else torch.cat((self._pushed, x))[-self.window_samples:]
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
        done = {"db": left + self.lengths["db"] - max(min(first, self.lengths["db"] - MIN_GEMM_ROWS + left), left)}
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

    # -- the pieces ----------------------------------------------------------------------------

    def _as_samples(self, window, exact_length: bool = True) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(window) if not isinstance(window, torch.Tensor) else window)
        if x.dtype == torch.int16:
            x = x.to(torch.float32) / INT16_SCALE
        if x.ndim != 1 or not x.is_floating_point():
            raise ValueError(f"expected one mono signal [T] of floats, got {tuple(x.shape)} {x.dtype}")
        if exact_length and len(x) != self.window_samples:
            raise ValueError(f"expected a window of {self.window_samples} samples, got {len(x)}")
        if not torch.isfinite(x).all():
            raise ValueError("samples must be finite (no NaN or infinity)")
        return x.to(device=self.head.window.device, dtype=torch.float32)

    def _shift(self, x: torch.Tensor, start: int) -> int | None:
        """Layer2 columns between the previous window and this one, or None when they share nothing exactly."""
        if self._start is None:
            return None
        shift = start - self._start
        if self._whole_shift(shift):
            return None
        if not torch.equal(self._samples[shift:], x[:-shift]):  # a discontinuity: nothing is shared
            return None
        return shift // STRIDE_SAMPLES

    def _whole_shift(self, shift: int) -> bool:
        """Whether a window ``shift`` samples after the previous one shares no column exactly."""
        if shift <= 0 or shift % STRIDE_SAMPLES or shift >= self.window_samples:
            return True
        left, right = self.edges["layer2"]
        return left + shift // STRIDE_SAMPLES + right >= self.lengths["layer2"]

    def _full(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.full_windows += 1
        cache = {"db": self._db_ends(x, 0, 0)[1]}
        below = cache["db"]
        for stage in self.stages:
            below = cache[stage.name] = self._run(stage, below)
        return cache

    def _incremental(self, x: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
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

    def _join(self, name: str, shift: int, head: torch.Tensor | None, tail: torch.Tensor) -> torch.Tensor:
        left, right = self.edges[name]
        kept = self._cache[name][..., left + shift:self.lengths[name] - right]
        return torch.cat([t for t in (head, kept, tail) if t is not None], dim=-1)

    def _db_ends(self, x: torch.Tensor, left: int, first: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """dB frames ``[0, left)`` and ``[first, end)`` of the window, framed and padded as the model frames it.

        One matrix product over at least :data:`MIN_GEMM_ROWS` frames: MKL computes a row of a
        product of fewer rows in another order, and a quiet frame's dB then moves by up to 1e-4
        relative; from 16 rows on, every row is bit-identical to the whole window's.
        """
        end = self.lengths["db"]
        lo = max(min(first, end - (MIN_GEMM_ROWS - left)), left)  # extra frames on the left of `first`
        pad_left, pad_right = self._pad
        padded = F.pad(to_reference_scale(x)[None], (pad_left, pad_right))
        frames = padded.unfold(-1, FRAME_LENGTH, HOP_LENGTH)
        frames = torch.cat((frames[:, :left], frames[:, lo:end]), dim=1) * self.head.window
        pad = (N_FFT - FRAME_LENGTH) // 2
        frames = F.pad(frames, (pad, N_FFT - FRAME_LENGTH - pad))
        spec = F.linear(frames, self.head.fbsp_kernel())
        re, im = spec.transpose(1, 2).chunk(2, dim=1)
        db = power_to_db(re * re + im * im)
        return (db[..., :left] if left else None), db[..., left + first - lo:]

    def _columns(self, stage: Stage, below: torch.Tensor, first: int, end: int) -> torch.Tensor | None:
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

    def _run(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        """``stage`` over columns ``x`` (a window or a slice of one), zero padded at both ends as the model pads."""
        head = self.head
        x = x.contiguous(memory_format=torch.channels_last)
        if stage.name == "stem":
            return head.maxpool(head.relu(head.bn1(head.conv1(x))))
        layer, att = (head.layer1, head.att1) if stage.name == "layer1" else (head.layer2, head.att2)
        out = layer(x)
        return out * self._gate(att, stage, x, out.shape[-2])

    def _gate(self, att: Attention2d, stage: Stage, x: torch.Tensor, height: int) -> torch.Tensor:
        """``att(x)`` pooled in time as the whole window pools (the pooling depends on the window's length)."""
        kf, sf, pf = _pool_params(x.shape[-2], height)
        below = {"layer1": "stem", "layer2": "layer1"}[stage.name]
        kt, st, pt = _pool_params(self.lengths[below], self.lengths[stage.name])
        if (kf, kt) != (1, 1):
            # ceil_mode keeps an odd slice's last column (an edge column, never kept) for kernel 2
            x = F.max_pool2d(x, (kf, kt), (sf, st), (pf, pt), ceil_mode=kt == 2)
        return torch.sigmoid(att.bn(att.conv_point(att.conv_depth(x))))

    def _tail(self, layer2: torch.Tensor) -> torch.Tensor:
        """layer3, layer4, the reduction and the projection of a whole window's layer2 output."""
        head = self.head
        x = layer2
        for layer, att in ((head.layer3, head.att3), (head.layer4, head.att4)):
            gate_input = x
            x = layer(x)
            x = x * att(gate_input, tuple(x.shape[-2:]))
        return head.fc(head.pool(x))
