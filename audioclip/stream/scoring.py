"""Detection scores: what a window's number for a label means.

Two scores, chosen with ``score = "label" | "softmax"`` (docs/scores.md):

- ``softmax``: the softmax of the scaled cosines over the label set ("which of these is it?"). A
  label's value moves whenever another label is added, removed or reworded.
- ``label``: a detection score that depends only on that label's prompts and the audio. The label's
  logit is compared with the logits of a fixed background bank of a few hundred generic sound
  descriptions shipped with the package (:mod:`audioclip.model.background`), embedded with the same
  template::

      score = sigmoid(logit_label - logmeanexp(logits of the bank entries kept for this label))

  ``logmeanexp`` is a soft upper quantile of the bank's logits: the score passes 0.5 where the
  label beats what a typical generic description of the window scores, and nears 1 where it beats
  the best of them. The entries whose text embedding is too close to the label's (its synonyms:
  "a dog barking" for the label "dog bark") would hide the label on exactly the sounds it
  describes, so each label leaves out the entries whose text distance to it (``1 - cosine``) is
  less than :data:`EXCLUDE_RATIO` of its median distance to the bank: its near-synonyms and word
  for word copies, never half the bank or more.

The bank's embeddings depend on the model and the template: computed once per text tower and
template, kept in memory and in the cache folder (PyTorch), and written by ``audioclip-export onnx``
into the export (``background.npz``) so that the ONNX path computes the same scores without torch.

A model whose labels cannot change (a fine-tuned head without a text tower) scores ``label`` as
its softmax: no other label can ever join it, so the softmax already stays put.

This module imports no torch at import time; the ONNX path never does.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.background import EXPORT_FILE, bank_digest, bank_texts, cache, cache_lock, torch_bank
from ..model.labels import ParameterError

log = logging.getLogger(__name__)

SCORES = ("label", "softmax")
DEFAULT_THRESHOLDS = {"softmax": 0.5, "label": 0.95}
"""A starting threshold per score. ``label``: measured on background audio (docs/scores.md)."""
EXCLUDE_RATIO = 0.3
"""A bank entry is left out for a label when its text distance ``1 - cosine`` to the label is below this
share of the label's median distance to the bank (a ratio: the same rule for any model's spread)."""


def check_score(score: str) -> str:
    """``score`` when it is one of :data:`SCORES`, else a :class:`ParameterError` naming ``score``."""
    if score not in SCORES:
        raise ParameterError("score", f"{{score}}: must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def default_threshold(score: str) -> float:
    """The starting event threshold of a score (docs/scores.md says how it was measured)."""
    return DEFAULT_THRESHOLDS[check_score(score)]


def score_line(score: str) -> str:
    """What the numbers under ``probs`` (and the thresholds) were: the summary's line."""
    if score == "label":
        return "scores: label (each label on its own against the background bank; docs/scores.md)"
    return "scores: softmax (over the labels given; they add up to 1)"


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2:
        raise ValueError(f"expected embeddings [N, D], got shape {rows.shape}")
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def bank_mask(label_embeddings, bank) -> np.ndarray:
    """``keep [L, M]``: True where bank entry ``m`` counts for label ``l`` (see :data:`EXCLUDE_RATIO`).

    Depends on each label's embedding alone, so a label keeps the same entries whatever other labels there are."""
    distance = 1.0 - _unit(label_embeddings) @ _unit(bank).T
    return distance >= EXCLUDE_RATIO * np.median(distance, axis=1, keepdims=True)


def label_scores(audio_embeddings, label_embeddings, bank, logit_scale: float, *,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """Label scores ``[N, L]`` in [0, 1] of audio embeddings ``[N, D]`` against label embeddings ``[L, D]`` and
    the bank's ``[M, D]`` (numpy only; stored float16 embeddings do). Rows are normalised here; ``keep``:
    :func:`bank_mask` of the labels, computed when not given. Column ``l`` depends only on label ``l``."""
    audio, labels, bank = _unit(audio_embeddings), _unit(label_embeddings), _unit(bank)
    if not audio.shape[1] == labels.shape[1] == bank.shape[1]:
        raise ValueError(f"embedding sizes differ: audio {audio.shape[1]}, labels {labels.shape[1]}, "
                         f"bank {bank.shape[1]}")
    keep = bank_mask(labels, bank) if keep is None else np.asarray(keep, bool)
    scale = float(logit_scale)
    label_logits = scale * (audio @ labels.T)
    bank_logits = scale * (audio @ bank.T)
    top = bank_logits.max(axis=1, keepdims=True)  # logits lie within +-scale: float64 cannot underflow below it
    mean_exp = (np.exp(bank_logits - top) @ keep.T.astype(np.float64)) / keep.sum(axis=1)
    margin = label_logits - (top + np.log(mean_exp))
    return 0.5 * (1.0 + np.tanh(0.5 * margin))  # the sigmoid, without overflow


# -- the bank's embeddings, once per text tower and template --------------------------------------------

def onnx_bank(folder: str | os.PathLike, template: str = "{}", *, threads: int | None = None,
              providers: Sequence | None = None, runtime: str = "onnxruntime") -> np.ndarray:
    """The bank's embeddings ``[M, D]`` for an ONNX export: its ``background.npz`` when that holds this bank and
    template, else embedded by its ``text_encoder.onnx`` once per process (no torch)."""
    from ..export.runtime import embed_labels

    folder = Path(folder)
    texts = bank_texts()
    file = folder / EXPORT_FILE
    if file.is_file():
        try:
            with np.load(file) as z:
                if list(z["texts"]) == texts and str(z["template"]) == template:
                    return z["embeddings"].astype(np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged copy: the text encoder instead
            log.warning("%s: unreadable (%s); embedding the background bank with the text encoder", file, e)
    key = (str(folder.resolve()), bank_digest(texts, template))
    with cache_lock:
        if key not in cache:
            why = "holds another template or bank" if file.is_file() else "has none (exported before label scores)"
            log.info("%s: embedding the %d background descriptions with its text encoder (its %s %s)", folder,
                     len(texts), EXPORT_FILE, why)
            cache[key] = _unit(embed_labels(folder, texts, template, threads=threads, providers=providers,
                                             runtime=runtime)).astype(np.float32)
        return cache[key]


# -- classifiers that give label scores --------------------------------------------------------------------

class _LabelScores:
    """A stream classifier whose ``scores`` are label scores; everything else is the wrapped classifier's."""

    def __init__(self, classifier, bank: np.ndarray):
        self.classifier = classifier
        self.labels = list(classifier.labels)
        self.bank = bank
        self.label_rows = _unit(self._label_embeddings())
        self.keep = bank_mask(self.label_rows, bank)
        texts = bank_texts()
        log.info("label scores against %d background descriptions; left out as too close to a label: %s",
                 len(texts), ", ".join(f"{label} {int((~row).sum())}" for label, row in zip(self.labels, self.keep)))
        for label, row in zip(self.labels, self.keep):
            log.debug("label %r leaves out: %s", label, "; ".join(t for t, k in zip(texts, row) if not k))

    def __getattr__(self, name):  # model, template, logit_scale, window sizes, sessions: the wrapped classifier's
        if name == "classifier":
            raise AttributeError(name)
        return getattr(self.classifier, name)

    def _label_embeddings(self) -> np.ndarray:
        raise NotImplementedError

    def label_scores_of(self, embeddings) -> np.ndarray:
        """Label scores ``[B, L]`` (float32) of normalised audio embeddings ``[B, D]`` (numpy)."""
        scores = label_scores(embeddings, self.label_rows, self.bank, self.classifier.logit_scale, keep=self.keep)
        return scores.astype(np.float32)

    def probs(self, waveform):
        """Label scores ``[B, L]`` (the name every classifier has for its scores)."""
        return self.scores(waveform)[0]

    def similarities(self, waveform):
        return self.scores(waveform)[1]


class TorchLabelScores(_LabelScores):
    """Label scores over a PyTorch ``ZeroShotClassifier``: ``scores``, ``scores_of`` (the incremental path)."""

    def _label_embeddings(self) -> np.ndarray:
        return self.classifier.label_embeddings.float().cpu().numpy()

    def scores(self, waveform):
        """``(label scores, similarities)``, both ``[B, L]`` tensors, from one pass of the audio encoder."""
        return self.scores_of(self.classifier.embed(waveform))

    def scores_of(self, embeddings):
        import torch

        sims = embeddings @ self.classifier.label_embeddings.T
        scores = self.label_scores_of(embeddings.float().cpu().numpy())
        return torch.from_numpy(scores).to(sims.device), sims


class OnnxLabelScores(_LabelScores):
    """Label scores over an ``OnnxClassifier`` that runs the audio encoder (``label_embeddings`` set)."""

    def _label_embeddings(self) -> np.ndarray:
        return self.classifier.label_embeddings

    def scores(self, waveform):
        """``(label scores, similarities)``, both float32 ``[B, L]``, from one run of the audio encoder."""
        logits, scores = self.logits_probs_of(self.classifier.embed(waveform))
        return scores, logits / np.float32(self.classifier.logit_scale)

    def logits_probs_of(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, label scores)`` of normalised embeddings (the form ``EmbeddingTap`` calls)."""
        logits = (embedding @ self.classifier.label_embeddings.T) * np.float32(self.classifier.logit_scale)
        return logits, self.label_scores_of(embedding)

    def scores_of_tail(self, output) -> tuple[np.ndarray, np.ndarray]:
        """The incremental tail graph's output for one window -> ``(label scores, similarities)``."""
        logits, scores = self.logits_probs_of(output.embedding)
        return scores, logits / np.float32(self.classifier.logit_scale)


def score_classifier(classifier, mode: str):
    """``classifier`` giving ``mode`` scores: ``"softmax"`` (the classifier as it is) or ``"label"`` (a
    :class:`TorchLabelScores` / :class:`OnnxLabelScores` over it, with the same ``labels`` and
    ``scores(waveform) -> (scores [B, L], similarities [B, L])``). A model whose labels cannot change
    (no text tower) keeps its softmax for ``"label"``, said once in the log."""
    check_score(mode)
    if isinstance(classifier, _LabelScores):
        if mode == "label":
            return classifier
        classifier = classifier.classifier
    if mode == "softmax":
        return classifier
    from ..export.runtime import TEXT_ENCODER_FILE, OnnxClassifier

    if isinstance(classifier, OnnxClassifier):
        if not (classifier.folder / TEXT_ENCODER_FILE).is_file():
            return _fixed(classifier, "this export has no text encoder")
        if classifier.label_embeddings is None:  # classifier.onnx scores its labels; the audio encoder is needed
            classifier = OnnxClassifier(classifier.folder, labels=classifier.labels, template=classifier.template,
                                        threads=classifier.threads, providers=classifier.providers,
                                        runtime=classifier.runtime, precision=classifier.runtime_precision)
        return OnnxLabelScores(classifier, onnx_bank(classifier.folder, classifier.template,
                                                     threads=classifier.threads, providers=classifier.providers,
                                                     runtime=classifier.runtime))
    if getattr(classifier, "linear", None) is not None or not classifier.model.has_text:
        return _fixed(classifier, "this fine-tuned head has no text tower")
    return TorchLabelScores(classifier, torch_bank(classifier.model, classifier.template))


def _fixed(classifier, why: str):
    log.info("label scores: %s, so its labels (%s) cannot change and their softmax already stays put: scoring "
             "with it", why, ", ".join(classifier.labels))
    return classifier
