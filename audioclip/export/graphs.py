"""PyTorch modules written for export: the graphs that ``torch.onnx.export`` turns into ONNX.

They reuse the trained submodules of an :class:`~audioclip.model.AudioCLIP` and differ from the
eager model only where an accelerator needs another form of the same computation:

- the FBSP front end frames with an index grid (unfold) and applies the learned transform as one
  ``MatMul`` with constant weights (no STFT/DFT/atan2: the weights are materialised at export);
- the zero padding that centres the frames is computed from the input length, so the frame
  count follows the length when it is dynamic;
- the attention gates pool with :func:`max_pool_half_width`, an exact form of
  ``adaptive_max_pool2d`` that works for a width whose parity is unknown at export;
- input is mono ``[batch, samples]``: no per-channel loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.audioclip import AudioCLIP
from ..model.constants import FRAME_LENGTH, HOP_LENGTH, N_FFT
from ..model.esresnext import ESResNeXtFBSP, to_reference_scale
from ..model.fbsp import power_to_db


def centred_padding(num_samples: torch.SymInt | int) -> tuple:
    """Zeros before and after a signal of ``num_samples >= FRAME_LENGTH`` samples, as the reference frames it.

    Written without branches so that a symbolic length exports as shape arithmetic.
    """
    frames = 1 + (num_samples - FRAME_LENGTH + HOP_LENGTH - 1) // HOP_LENGTH
    total = (frames - 1) * HOP_LENGTH + FRAME_LENGTH - num_samples
    return total // 2, total - total // 2


def max_pool_half(x: torch.Tensor) -> torch.Tensor:
    """``adaptive_max_pool2d`` from ``(h, w)`` to ``(ceil(h / 2), ceil(w / 2))``, exactly, for any width parity.

    Adaptive pooling from ``n`` to ``m = ceil(n / 2)`` takes the window
    ``[floor(i n / m), ceil((i + 1) n / m))``: ``{2i, 2i + 1}`` when ``n`` is even (MaxPool k2 s2),
    ``{2i - 1, 2i, 2i + 1}`` clipped to the signal when ``n`` is odd (MaxPool k3 s2 p1, the padding
    being -inf). The height is static (341 bins become 171, 86, 43, 22, 11 rows) and takes the one
    form its parity calls for; so does a width known at export (a fixed window). A symbolic width
    (``--dynamic-length``) has a parity unknown at export: the even form then runs on the input
    padded by one -inf column, so that both forms give ``floor((n - 1) / 2) + 1`` columns (the
    stride-2 convolutions' count), and the graph computes both and selects by the width's parity
    with ``Where``. Exact, no ``If`` node, and no shape guard for the exporter.
    """
    if not isinstance(x.shape[-1], int):
        return max_pool_half_any_width(x)
    kh, ph = (2, 0) if x.shape[-2] % 2 == 0 else (3, 1)
    if x.shape[-1] % 2 == 0:
        return F.max_pool2d(x, (kh, 2), (2, 2), (ph, 0))
    return F.max_pool2d(x, (kh, 3), (2, 2), (ph, 1))


def max_pool_half_any_width(x: torch.Tensor) -> torch.Tensor:
    """:func:`max_pool_half` with the width's parity decided in the graph (both forms, then ``Where``)."""
    kh, ph = (2, 0) if x.shape[-2] % 2 == 0 else (3, 1)
    even = F.max_pool2d(F.pad(x, (0, 1), value=float("-inf")), (kh, 2), (2, 2), (ph, 0))
    odd = F.max_pool2d(x, (kh, 3), (2, 2), (ph, 1))
    parity = torch.ones_like(x[:1, :1, :1, :], dtype=torch.int64).sum() % 2
    return torch.where(parity == 0, even, odd)


class Gate(nn.Module):
    """An attention gate of the audio head: max-pool to the stage's output size, convolutions, sigmoid."""

    def __init__(self, att: nn.Module, halve: bool):
        super().__init__()
        self.att = att
        self.halve = halve

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.halve:
            x = max_pool_half(x)
        return torch.sigmoid(self.att.bn(self.att.conv_point(self.att.conv_depth(x))))


class FrontEnd(nn.Module):
    """``[B, T]`` waveforms in [-1, 1] -> dB bands ``[B, 3, 341, frames]`` as the eager head computes them.

    Frames are sliced from the signal cut into hop-long rows (the row count follows the length: no
    length baked in), windowed and zero padded to ``N_FFT`` exactly as in
    :func:`~audioclip.model.fbsp.power_spectrogram`, then the learned transform is one ``MatMul`` with a
    constant ``[N_FFT, 2046]`` weight. Keeping the window product and the padding, rather than folding
    them into a conv kernel, keeps the rounding of quiet bins (below -100 dB) closest to PyTorch's.

    ``as_conv=True`` gives the faster form that fp16 and int8 graphs use: one strided ``Conv``
    (kernel ``FRAME_LENGTH``, stride ``HOP_LENGTH``, 2046 output channels) with the window folded
    into its kernel and the padding columns dropped. It runs faster on ONNX Runtime
    (docs/benchmarks.md) and is as close to exact arithmetic as PyTorch's own float32 front end,
    but on a quiet ESC-50 clip (coughing) its fp32 embeddings land 3.1e-4 from PyTorch's where the
    fp32 bound is 2.1e-4 (:mod:`audioclip.export.verify`); the reduced-precision bounds are cosines
    that this cannot move.
    """

    def __init__(self, audio: ESResNeXtFBSP, *, as_conv: bool = False):
        super().__init__()
        self.as_conv = as_conv
        pad = (N_FFT - FRAME_LENGTH) // 2
        with torch.no_grad():
            transform = audio.fbsp_kernel().detach()
            if as_conv:
                kernel = transform[:, pad:pad + FRAME_LENGTH] * audio.window.detach()
                self.register_buffer("kernel", kernel[:, None, :].contiguous())  # [2046, 1, FRAME_LENGTH]
            else:
                self.register_buffer("transform", transform.T.contiguous())
                self.register_buffer("window", audio.window.detach().clone())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        num_samples = waveform.shape[-1]
        left, right = centred_padding(num_samples)
        if self.as_conv:
            x = F.pad(to_reference_scale(waveform), (left, right))
            return self._db(F.conv1d(x[:, None, :], self.kernel, stride=HOP_LENGTH))  # [B, 2 * 1023, frames]
        # Frame i is rows i and i + 1 and the head of row i + 2 of the padded signal cut into hop-long
        # rows (FRAME_LENGTH = 2 hops + 532): three slices and a concat, no index gather (faster
        # on ONNX Runtime, same values). The rows need 3 hops - FRAME_LENGTH more zeros.
        x = F.pad(to_reference_scale(waveform), (left, right + 3 * HOP_LENGTH - FRAME_LENGTH))
        rows = x.reshape(x.shape[0], -1, HOP_LENGTH)
        raw = torch.cat((rows[:, :-2], rows[:, 1:-1], rows[:, 2:, :FRAME_LENGTH - 2 * HOP_LENGTH]), dim=-1)
        return self.db_of_frames(raw)

    def db_of_frames(self, raw: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, frames, FRAME_LENGTH]`` of the padded signal at the reference's scale -> dB bands."""
        pad = (N_FFT - FRAME_LENGTH) // 2
        framed = F.pad(raw * self.window, (pad, N_FFT - FRAME_LENGTH - pad))  # [B, frames, N_FFT]
        return self._db((framed @ self.transform).transpose(1, 2))  # [B, 2 * 1023, frames]

    @staticmethod
    def _db(spec: torch.Tensor) -> torch.Tensor:
        re, im = spec.chunk(2, dim=1)
        return power_to_db(re * re + im * im)


class Trunk(nn.Module):
    """dB bands -> pooled features ``[B, F]``: the audio head's ResNeXt with its gates, then the projection."""

    def __init__(self, audio: ESResNeXtFBSP):
        super().__init__()
        self.audio = audio
        # layer1 keeps the size (its gate pools nothing); the stride-2 stages halve both axes.
        self.gates = nn.ModuleList([Gate(audio.att1, False), Gate(audio.att2, True),
                                    Gate(audio.att3, True), Gate(audio.att4, True)])

    def forward(self, db: torch.Tensor) -> torch.Tensor:
        return self.audio.fc(self.pooled(db))

    def pooled(self, db: torch.Tensor) -> torch.Tensor:
        """The pooled features ``[B, F]`` that enter the projection (a standalone head's linear classifier)."""
        a = self.audio
        x = a.maxpool(a.relu(a.bn1(a.conv1(db))))
        for layer, gate in zip((a.layer1, a.layer2), self.gates[:2]):
            x = layer(x) * gate(x)
        return self.pooled_from_layer2(x)

    def pooled_from_layer2(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`pooled` from layer2's output: layer3, layer4 and the gated reduction."""
        a = self.audio
        for layer, gate in zip((a.layer3, a.layer4), self.gates[2:]):
            x = layer(x) * gate(x)
        pooled = x.mean(dim=(-2, -1), keepdim=True)
        gate = torch.sigmoid(a.att5.bn(a.att5.conv_point(a.att5.conv_depth(x.amax(dim=(-2, -1), keepdim=True)))))
        return torch.flatten(pooled * gate, 1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class AudioEncoderGraph(nn.Module):
    """``waveform`` ``[batch, samples]`` -> ``embedding`` ``[batch, D]``, L2-normalised."""

    def __init__(self, model: AudioCLIP, *, conv_front_end: bool = False):
        super().__init__()
        self.front = FrontEnd(model.audio, as_conv=conv_front_end)
        self.trunk = Trunk(model.audio)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.trunk(self.front(waveform)))


class ClassifierGraph(nn.Module):
    """``waveform`` -> ``(logits, probs)`` ``[batch, L]``; label embeddings and logit scale are constants.

    With ``linear`` (a standalone head's ``(weight [L, F], bias [L])``) the logits are that linear
    classifier's over the pooled features instead, baked in as constants.
    """

    def __init__(self, model: AudioCLIP, label_embeddings: torch.Tensor, logit_scale: float, *,
                 conv_front_end: bool = False, linear: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.encoder = AudioEncoderGraph(model, conv_front_end=conv_front_end)
        self.register_buffer("label_embeddings_t", l2_normalize(label_embeddings.detach().float()).T.contiguous())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.linear = linear is not None
        if self.linear:
            self.register_buffer("weight_t", linear[0].detach().float().T.contiguous())
            self.register_buffer("bias", linear[1].detach().float().clone())

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.encoder.trunk.pooled(self.encoder.front(waveform)))

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, probs)`` of pooled features ``[B, F]``."""
        if self.linear:
            logits = pooled @ self.weight_t + self.bias
        else:
            logits = self.logit_scale * (l2_normalize(self.encoder.trunk.audio.fc(pooled)) @ self.label_embeddings_t)
        return logits, torch.softmax(logits, dim=-1)


class TextEncoderGraph(nn.Module):
    """``tokens`` int64 ``[n, 77]`` -> ``embedding`` ``[n, D]``, L2-normalised (CLIP's text tower)."""

    def __init__(self, model: AudioCLIP):
        super().__init__()
        if not model.has_text:
            raise ValueError("this model has no text tower: there is no text encoder to export")
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        # Indexing the table (not ``nn.Embedding``'s op) keeps the name ``embedding`` free for the output.
        x = m.token_embedding.weight[tokens] + m.positional_embedding
        x = m.transformer(x.permute(1, 0, 2), m.attn_mask.to(x.dtype)).permute(1, 0, 2)
        x = m.ln_final(x)
        # The end token has the largest id: select its row without advanced indexing.
        eot = tokens.argmax(dim=-1, keepdim=True).unsqueeze(-1).expand(-1, 1, x.shape[-1])
        return l2_normalize(torch.gather(x, 1, eot).squeeze(1) @ m.text_projection)
