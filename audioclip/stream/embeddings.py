"""A classifier wrapper that keeps each window's audio embedding (archives' ``--embeddings``, the monitor's store)."""

from __future__ import annotations

import numpy as np


class EmbeddingTap:
    """A classifier that also keeps each window's normalised audio embedding (float16).

    Scores come from the same numbers as the wrapped classifier's ``scores``: PyTorch's
    ``embed`` + ``scores_of``, or the ONNX audio encoder's ``embedding`` and the same softmax.
    """

    def __init__(self, classifier):
        self.classifier = classifier
        self.labels = classifier.labels
        self.window_samples = getattr(classifier, "window_samples", None)
        self.embeddings: list[np.ndarray] = []
        if hasattr(classifier, "scores_of"):
            self._run = self._torch
        elif getattr(classifier, "label_embeddings", None) is not None:
            self._run = self._onnx
        else:
            raise ValueError("--embeddings needs the export's audio encoder: pass --labels with --onnx (an export "
                             "scoring only its own labels through classifier.onnx gives no embeddings)")

    def scores(self, waveform):
        probs, sims, embedding = self._run(waveform)
        self.embeddings.append(np.asarray(embedding, np.float16))
        return probs, sims

    def _torch(self, waveform):
        embedding = self.classifier.embed(waveform)
        probs, sims = self.classifier.scores_of(embedding)
        return probs, sims, embedding.float().cpu().numpy()

    def _onnx(self, waveform):
        from ..export.runtime import as_mono_batch

        c = self.classifier
        x = as_mono_batch(waveform, min_samples=c.min_samples, window_samples=c.window_samples)
        (embedding,) = c.session.run(["embedding"], {c.input_name: x})
        logits, probs = c.logits_probs_of(embedding)
        return probs, logits / np.float32(c.logit_scale), embedding

    def take(self) -> np.ndarray | None:
        out = np.concatenate(self.embeddings) if self.embeddings else None
        self.embeddings = []
        return out
