"""The audio contract of AudioCLIP: every other module imports these names."""

SAMPLE_RATE = 44100
"""Samples per second of every waveform the model sees."""

FRAME_LENGTH = 1654
"""Samples per FBSP frame (the reference's ``win_length``)."""

HOP_LENGTH = 561
"""Samples between the starts of consecutive FBSP frames."""

STRIDE_SAMPLES = 8 * HOP_LENGTH
"""4488: samples per layer2 column of the audio head; windows that many samples apart share columns."""

N_FFT = 2048
"""Length a frame is zero padded to before the learned transform."""

N_BINS = N_FFT // 2 + 1
"""Output bins of the learned (one-sided) FBSP transform: 1025."""

N_BANDS = 3
"""The FBSP bins are split into this many bands, the trunk's input channels."""

BAND_HEIGHT = N_BINS // N_BANDS
"""Rows per band (341); the last ``N_BINS - N_BANDS * BAND_HEIGHT`` bins are dropped."""

INT16_SCALE = 32768.0
"""int16 samples are divided by this to give floats in [-1, 1]."""

LOG10_FLOOR = 1e-18
"""Power values that are not positive are replaced by this before ``10 * log10``."""

CONTEXT_LENGTH = 77
"""Tokens per text, start and end tokens included."""

WINDOW_SECONDS = 5.0
"""Clip length the released checkpoints were trained on (ESC-50 clips)."""
