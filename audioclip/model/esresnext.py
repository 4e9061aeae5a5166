"""ESResNeXt-FBSP: the AudioCLIP audio head (state-dict names of the reference's ``audio.*``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioConfig
from .constants import INT16_SCALE, N_BANDS, N_BINS
from .fbsp import LinearFBSP, blackman_harris_window, fbsp_kernel, power_spectrogram, power_to_db


def adaptive_max_pool2d_exact(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_max_pool2d`` written with fixed-window pooling where that is exact.

    Adaptive pooling from length ``n`` to ``m`` takes window ``i`` over
    ``[floor(i n / m), ceil((i + 1) n / m))``. For ``n == m`` that is the identity, for
    ``n == 2m`` MaxPool(2, 2), for ``n == 2m - 1`` MaxPool(3, 2, padding 1) (the padding is -inf
    and clips the first and last windows to 2), for ``m == 1`` a global max. These are the only
    cases the audio head produces (each stage halves with a stride-2, padding-1 convolution).
    Other sizes fall back to the adaptive op.
    """
    kernel, stride, padding = [], [], []
    for n, m in zip(x.shape[-2:], size):
        if n == m:
            kernel.append(1), stride.append(1), padding.append(0)
        elif m == 1:
            kernel.append(n), stride.append(n), padding.append(0)
        elif n == 2 * m:
            kernel.append(2), stride.append(2), padding.append(0)
        elif n == 2 * m - 1:
            kernel.append(3), stride.append(2), padding.append(1)
        else:
            return F.adaptive_max_pool2d(x, size)
    if kernel == [1, 1]:
        return x
    return F.max_pool2d(x, kernel, stride, padding)


class Bottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, groups: int, width_per_group: int):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Attention2d(nn.Module):
    """Sigmoid gate: max-pool a stage's input to its output size, depthwise + pointwise conv, BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.conv_depth = nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = adaptive_max_pool2d_exact(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


def _stage(inplanes: int, planes: int, blocks: int, stride: int, cfg: AudioConfig) -> nn.Sequential:
    layers = [Bottleneck(inplanes, planes, stride, cfg.groups, cfg.width_per_group)]
    layers += [Bottleneck(planes * 4, planes, 1, cfg.groups, cfg.width_per_group) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def to_reference_scale(x: torch.Tensor) -> torch.Tensor:
    """Float audio in [-1, 1] -> the reference's input scale.

    The reference takes int16-range values and maps [-32768, 32767] linearly onto [-1, 1]
    (``scale()``), which is not exactly ``/ 32768``. Reproduced here, operation for operation.
    """
    return ((x * INT16_SCALE + INT16_SCALE) * 2.0) / 65535.0 - 1.0


class ESResNeXtFBSP(nn.Module):
    """Waveforms ``[B, C, T]`` in [-1, 1] at 44.1 kHz -> audio embeddings ``[B, embed_dim]`` (not normalised).

    Channels run through the trunk separately (batched) and their pooled features are summed
    before the projection, as in the reference.
    """

    def __init__(self, cfg: AudioConfig = AudioConfig()):
        super().__init__()
        w = cfg.width
        self.fbsp = LinearFBSP(N_BINS, normalized=True)
        self.register_buffer("window", blackman_harris_window())
        self.conv1 = nn.Conv2d(N_BANDS, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(w, w, cfg.layers[0], 1, cfg)
        self.att1 = Attention2d(w, w * 4, (3, 1), (1, 0))
        self.layer2 = _stage(w * 4, w * 2, cfg.layers[1], 2, cfg)
        self.att2 = Attention2d(w * 4, w * 8, (1, 5), (0, 2))
        self.layer3 = _stage(w * 8, w * 4, cfg.layers[2], 2, cfg)
        self.att3 = Attention2d(w * 8, w * 16, (3, 1), (1, 0))
        self.layer4 = _stage(w * 16, w * 8, cfg.layers[3], 2, cfg)
        self.att4 = Attention2d(w * 16, w * 32, (1, 5), (0, 2))
        self.att5 = Attention2d(w * 32, w * 32, (3, 5), (1, 2))
        self.fc = nn.Linear(w * 32, cfg.embed_dim)
        self._kernel_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def feature_dim(self) -> int:
        """Size of the pooled features that ``fc`` projects."""
        return self.fc.in_features

    def fbsp_kernel(self) -> torch.Tensor:
        """The learned transform as a ``[2046, N_FFT]`` matrix; cached unless a gradient must flow into it."""
        params = (self.fbsp.m, self.fbsp.fb, self.fbsp.fc)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return fbsp_kernel(self.fbsp.weights())
        key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in params)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            with torch.no_grad():
                self._kernel_cache = (key, fbsp_kernel(self.fbsp.weights()))
        return self._kernel_cache[1]

    def spectrogram_db(self, x: torch.Tensor, fbsp_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, T]`` waveforms in [-1, 1] -> dB bands ``[N, 3, 341, frames]`` (the reference's trunk input).

        ``fbsp_weights``: ``self.fbsp.weights()`` already built, e.g. by a training step that also
        feeds them to the FBSP norm loss; by default the cached transform is used.
        """
        x = to_reference_scale(x.to(self.window.dtype))
        kernel = self.fbsp_kernel() if fbsp_weights is None else fbsp_kernel(fbsp_weights)
        return power_to_db(power_spectrogram(x, kernel, self.window))

    def features(self, db: torch.Tensor) -> torch.Tensor:
        """Trunk with attention gates: ``[N, 3, 341, frames]`` -> ``[N, 32 w, h, w']``.

        Runs channels-last (faster on CPU than the reference's layout; docs/benchmarks.md), within
        1e-5 (relative) of it.
        """
        db = db.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(db))))
        for layer, att in ((self.layer1, self.att1), (self.layer2, self.att2),
                           (self.layer3, self.att3), (self.layer4, self.att4)):
            gate_input = x
            x = layer(x)
            x = x * att(gate_input, tuple(x.shape[-2:]))
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Gated global average: ``[N, F, h, w]`` -> ``[N, F]``."""
        pooled = F.adaptive_avg_pool2d(x, 1)
        return torch.flatten(pooled * self.att5(x, (1, 1)), 1)

    def pooled_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> channel-summed pooled features ``[B, F]`` (the input of ``fc``).

        Without autograd on a CPU the trunk runs one signal at a time, so that its feature maps stay
        in cache (docs/benchmarks.md). The result is the same: batch norm is in eval mode, so every
        signal is computed independently either way.
        """
        b, c, t = waveform.shape
        db = self.spectrogram_db(waveform.reshape(b * c, t))
        if db.device.type == "cpu" and not torch.is_grad_enabled() and db.shape[0] > 1:
            pooled = torch.cat([self.pool(self.features(one)) for one in db.split(1)])
        else:
            pooled = self.pool(self.features(db))
        return pooled.reshape(b, c, -1).sum(dim=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled_features(waveform))

    def _apply(self, fn, recurse=True):
        self._kernel_cache = None
        return super()._apply(fn, recurse)
