"""Label prompt groups: CLIP-style prompt ensembling for both backends (the monitor's and the archive's labels).

A label's embedding is the mean of its prompts' L2-normalised text embeddings, normalised again
(open_clip's zero-shot classifier builder). The classifiers returned here are the stream's own
(``ZeroShotClassifier`` or ``OnnxClassifier``) with those embeddings in place of the labels' names:
same ``labels``, same ``scores(waveform) -> (probs, similarities)``, the model's logit scale.
A label whose only prompt is its name scores exactly as it does today.

The ONNX path imports no torch.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

PromptGroups = Sequence[tuple[str, Sequence[str]]]
"""``[(label, [prompt, ...]), ...]`` in label order."""


def check_groups(groups: PromptGroups) -> tuple[list[str], list[list[str]]]:
    """``(labels, prompts)`` of ``groups``; ``ValueError`` naming the label when a group is empty."""
    from ..model.labels import check_labels

    names = check_labels([name for name, _ in groups])
    prompts = []
    for name, group in groups:
        group = [group] if isinstance(group, str) else list(group)
        if not group or not all(isinstance(p, str) and p.strip() for p in group):
            raise ValueError(f"label {name!r}: prompts must be a non-empty list of non-empty strings, got {group!r}")
        prompts.append(group)
    return names, prompts


def ensemble(embeddings: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Rows ``[sum(sizes), D]`` of prompt embeddings -> ``[len(sizes), D]`` group embeddings.

    Each row is normalised, each group's rows averaged and the mean normalised again. A group of
    one prompt is its normalised embedding unchanged (no second rounding).
    """
    embeddings = np.asarray(embeddings, np.float32)
    rows = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    out, start = [], 0
    for size in sizes:
        group = rows[start:start + size]
        start += size
        if size == 1:
            out.append(group[0])
        else:
            mean = group.mean(axis=0)
            out.append(mean / np.linalg.norm(mean))
    if start != len(rows):
        raise ValueError(f"group sizes add up to {start}, but there are {len(rows)} prompt embeddings")
    return np.stack(out)


def _single_named(names: list[str], prompts: list[list[str]]) -> bool:
    return all(group == [name] for name, group in zip(names, prompts))


def torch_group_classifier(model, groups: PromptGroups, template: str | None = None, *, precision: str = "fp32"):
    """A ``ZeroShotClassifier`` over ``model`` whose labels are the groups' names and whose label
    embeddings are the groups' prompt ensembles (``template`` around every prompt); ``precision`` as it takes it."""
    import torch

    from ..model import ZeroShotClassifier
    from ..model.audioclip import normalize

    names, prompts = check_groups(groups)
    classifier = ZeroShotClassifier(model, names, template, precision=precision)
    if _single_named(names, prompts):
        return classifier  # today's classifier, bit for bit
    flat = [p for group in prompts for p in group]
    with torch.inference_mode():
        rows = normalize(model.encode_text(flat, classifier.template).float())
    embeddings = torch.from_numpy(ensemble(rows.cpu().numpy(), [len(g) for g in prompts]))
    classifier.label_embeddings = embeddings.to(classifier.label_embeddings.device)
    log.info("%d labels from %d prompts (PyTorch)", len(names), len(flat))
    return classifier


def onnx_group_classifier(directory: str | os.PathLike, groups: PromptGroups, template: str | None = None, *,
                          threads: int | None = None, providers: Sequence | None = None,
                          runtime: str = "onnxruntime", precision: str | None = None):
    """An ``OnnxClassifier`` over the export in ``directory`` with the groups' prompt ensembles,
    embedded by its ``text_encoder.onnx`` (no torch); ``runtime``, ``precision``: as ``OnnxClassifier`` takes them."""
    from ..export.runtime import OnnxClassifier, embed_labels

    names, prompts = check_groups(groups)
    classifier = OnnxClassifier(directory, labels=names, template=template, threads=threads, providers=providers,
                                runtime=runtime, precision=precision)
    if _single_named(names, prompts):
        return classifier
    flat = [p for group in prompts for p in group]
    rows = embed_labels(directory, flat, classifier.template, threads=threads, providers=providers, runtime=runtime)
    classifier.label_embeddings = ensemble(rows, [len(g) for g in prompts])
    log.info("%d labels from %d prompts (ONNX Runtime)", len(names), len(flat))
    return classifier


def load_group_classifier(*, groups: PromptGroups, template: str | None = None, checkpoint: str | os.PathLike = "full",
                          onnx: str | os.PathLike | None = None, threads: int | None = None,
                          runtime: str | None = None, precision: str | None = None):
    """The stream's classifier for prompt groups: PyTorch over ``checkpoint``, or the ONNX export
    in ``onnx``. ``threads``, ``runtime``, ``precision`` as ``audioclip.stream.backends.load_classifier``. No
    groups: the labels the checkpoint or export carries (a fine-tuned head)."""
    from ..stream.backends import check_backend, check_torch_bf16, default_threads, load_classifier

    if not groups:
        return load_classifier(checkpoint=None if onnx is not None else checkpoint, onnx=onnx, labels=None,
                               threads=threads, runtime=runtime, precision=precision)  # checkpoint: "full" default
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    runtime, precision = check_backend(onnx=onnx, runtime=runtime, precision=precision)
    if onnx is not None:
        return onnx_group_classifier(onnx, groups, template, threads=threads, runtime=runtime, precision=precision)
    import torch

    from ..model import load_model

    torch.set_num_threads(threads)
    classifier = torch_group_classifier(load_model(checkpoint), groups, template, precision=precision)
    if precision == "bf16":
        check_torch_bf16(classifier)
    return classifier
