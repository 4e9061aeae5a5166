"""Exact incremental encoding of overlapping windows on PyTorch: one source's front end, stem, layer1
and layer2 are shared (the bookkeeping is :mod:`audioclip.model.overlap`'s).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .constants import FRAME_LENGTH, HOP_LENGTH, INT16_SCALE, N_FFT, STRIDE_SAMPLES
from .esresnext import Attention2d, ESResNeXtFBSP, to_reference_scale
from .fbsp import power_to_db
from .overlap import MIN_GEMM_ROWS, STAGES, OverlapEncoder, Stage, pool_params, stage_edges, stage_lengths

__all__ = ["STAGES", "STRIDE_SAMPLES", "IncrementalEncoder", "stage_edges", "stage_lengths"]

_EXACT_ROWS: dict[tuple, tuple[int, ...]] = {}
"""``IncrementalEncoder._exact_rows`` by shapes, device and thread count."""


class IncrementalEncoder(OverlapEncoder):
    """One source's audio embeddings of overlapping windows, equal to ``encode_audio`` on each window.

    ``model``: an ``AudioCLIP`` (its ``audio`` head is used) or the head itself, in eval mode.
    ``window_samples``, ``hop_samples``, ``edges``: as :class:`~audioclip.model.overlap.OverlapEncoder`
    takes them. Embeddings are ``torch.Tensor`` s ``[1, D]``.
    """

    def __init__(self, model, window_samples: int, *, hop_samples: int | None = None,
                 edges: dict[str, tuple[int, int]] | None = None):
        head = getattr(model, "audio", model)
        if not isinstance(head, ESResNeXtFBSP):
            raise ValueError(f"model must be an AudioCLIP or its ESResNeXtFBSP audio head, got {type(model).__name__}")
        if head.training:
            raise ValueError("the model is in training mode (batch norm would use batch statistics): call model.eval()")
        self.head = head
        super().__init__(head, window_samples, hop_samples=hop_samples, edges=edges)

    def stages_of(self, window) -> dict[str, torch.Tensor]:
        """Each shared stage's output for ``window`` computed whole (``{"db": ..., "layer2": ...}``), leaving the
        stream as it was: what int8 calibrates the exported stage graphs on."""
        with torch.inference_mode():
            return self._full(self._samples_of(window))

    # -- the arrays ------------------------------------------------------------------------------

    def _computing(self):
        return torch.inference_mode()

    def _as_array(self, window):
        x = window if isinstance(window, torch.Tensor) else torch.as_tensor(np.asarray(window))
        if x.dtype == torch.int16:
            x = x.to(torch.float32) / INT16_SCALE
        if x.is_floating_point():
            x = x.to(device=self.head.window.device, dtype=torch.float32)
        return x

    @staticmethod
    def _finite(x: torch.Tensor) -> bool:
        return bool(torch.isfinite(x).all())

    def _cat(self, parts: list) -> torch.Tensor:
        return torch.cat(parts, dim=-1)

    @staticmethod
    def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b)

    # -- the stages ------------------------------------------------------------------------------

    def _db_ends(self, x: torch.Tensor, left: int, first: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """dB frames ``[0, left)`` and ``[first, end)`` of the window, framed and padded as the model frames it.

        One matrix product over a number of frames whose rows the BLAS computes as it computes the
        whole window's (:meth:`_exact_rows`): a product of fewer rows may be summed in another order,
        and a quiet frame's dB then moves by up to 1e-4 relative (MKL on an AMD EPYC: below 12 rows;
        a fixed 16 rows was exact there but not on every CPU, issue 22; docs/incremental.md).
        """
        end = self.lengths["db"]
        self._gemm_rows = self._exact_rows(self.head.fbsp_kernel(), end)
        lo = self._db_first(left, first)  # extra frames on the left of `first`
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

    def _exact_rows(self, kernel: torch.Tensor, n: int) -> tuple[int, ...]:
        """Frame counts from ``MIN_GEMM_ROWS`` on, doubling, whose products with ``kernel`` give the rows
        of an ``n``-frame product bit for bit, taken as ``_db_ends`` takes them (the first frames, then
        the last ones); ``n`` itself always does. Checked once per process, shape and thread count on
        random frames (a silent window would pass any count)."""
        left = self.edges["db"][0]
        key = (n, left, tuple(kernel.shape), kernel.dtype, kernel.device, torch.get_num_threads())
        if key not in _EXACT_ROWS:
            generator = torch.Generator().manual_seed(0)
            frames = torch.randn(1, n, kernel.shape[1], generator=generator).to(kernel)
            whole = F.linear(frames, kernel)
            exact, rows = [n], MIN_GEMM_ROWS
            while rows < n:
                taken = torch.cat((frames[:, :left], frames[:, n - rows + left:]), dim=1)
                expected = torch.cat((whole[:, :left], whole[:, n - rows + left:]), dim=1)
                if torch.equal(F.linear(taken, kernel), expected):
                    exact.append(rows)
                rows *= 2
            _EXACT_ROWS[key] = tuple(sorted(exact))
        return _EXACT_ROWS[key]

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
        kf, sf, pf = pool_params(x.shape[-2], height)
        kt, st, pt = self._gate_pooling(stage)
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
