"""Queries for search, in any of AudioCLIP's three modalities: a text, a sound, a picture, embedded by the
towers of the checkpoint that embedded what is searched (:class:`QueryEncoder`; pictures with CLIP's
preprocessing, :func:`clip_preprocess`), and which checkpoint that is (:func:`query_checkpoint`).
"""

from __future__ import annotations

import os

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def query_checkpoint(root, model: str, checkpoint: str | None) -> str:
    """The checkpoint that embeds queries for embeddings ``model`` made (as recorded: a checkpoint, or
    ``onnx:FOLDER``): that one; for an ONNX export the ``checkpoint`` it was exported from, which must be
    given; another checkpoint is refused, naming both."""
    if model.startswith("onnx:"):
        if checkpoint is None:
            raise ValueError(f"{root} was embedded with the ONNX export {model[5:]}: pass --checkpoint, "
                             "the checkpoint it was exported from, to embed queries")
        return checkpoint
    if checkpoint is not None and checkpoint != model:
        raise ValueError(f"{root} was embedded with {model}, not {checkpoint}: its embeddings cannot be "
                         f"compared with another model's; search with --checkpoint {model}")
    return model


def clip_preprocess(path: str | os.PathLike, resolution: int = 224) -> np.ndarray:
    """CLIP's image transform in Pillow and numpy: bicubic resize of the short side to ``resolution``,
    centre crop, RGB in [0, 1], CLIP's mean and standard deviation. ``[3, resolution, resolution]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not an image Pillow can read ({e})") from e
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(resolution * long / short)  # torchvision's Resize(int): the long side truncated
    size = (resolution, new_long) if w <= h else (new_long, resolution)
    image = image.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - resolution) / 2.0)), int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    x = np.asarray(image, np.float32) / 255.0
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class QueryEncoder:
    """Embeds queries with a checkpoint's towers (normalised, float32 ``[D]``)."""

    def __init__(self, checkpoint, model=None):
        if model is None:
            from ..model import load_model

            model = load_model(checkpoint)
        self.model = model.eval()

    def text(self, text: str) -> np.ndarray:
        import torch

        if not text.strip():
            raise ValueError("--text is empty: describe the sound, e.g. \"dog barking\"")
        with torch.inference_mode():
            return _unit(self.model.encode_text([text]).float().cpu().numpy()[0])

    def audio(self, path: str | os.PathLike, *, window: float) -> np.ndarray:
        """The mean embedding of the clip's consecutive windows (a clip shorter than one is one window
        as it is, zero-padded only to one FBSP frame if shorter still)."""
        import torch

        from ..audio import load_audio
        from ..model.constants import FRAME_LENGTH
        from ..model.labels import window_samples

        samples = load_audio(path)
        n = window_samples(window)
        if len(samples) < n:
            n = max(len(samples), FRAME_LENGTH)
        count = max(1, len(samples) // n)
        windows = np.zeros((count, n), np.float32)
        for i in range(count):
            chunk = samples[i * n:(i + 1) * n]
            windows[i, :len(chunk)] = chunk
        with torch.inference_mode():
            rows = self.model.encode_audio(windows).float().cpu().numpy()
        return _unit(np.mean([_unit(r) for r in rows], axis=0))

    def image(self, path: str | os.PathLike) -> np.ndarray:
        import torch

        if not self.model.has_image:
            raise ValueError("this checkpoint has no image tower: search by image needs a release checkpoint")
        x = clip_preprocess(path, self.model.config.vision.image_resolution)
        with torch.inference_mode():
            return _unit(self.model.encode_image(torch.from_numpy(x)[None]).float().cpu().numpy()[0])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x)
