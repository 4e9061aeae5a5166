"""Accuracy per official fold and a confusion matrix, for release (zero-shot) and fine-tuned checkpoints."""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from ..archive.metrics import retrieval_metrics
from ..files import atomic_write_text
from ..model import AudioCLIP
from .audio_io import DecodeCache
from .datasets import DatasetIndex
from .heads import AudioClassifier
from .loader import ClipDataset, make_loader, prepare_clips

log = logging.getLogger(__name__)


def progress_bar(enabled: bool = True, *fields: str) -> Progress:
    """A rich progress bar on stderr with ``fields`` (e.g. ``loss``) after the count; silent when not ``enabled``
    or when stderr is not a terminal (logs then carry the per-epoch lines)."""
    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    console = Console(stderr=True)
    return Progress(*columns, TimeElapsedColumn(), console=console, disable=not (enabled and console.is_terminal),
                    transient=True)


@torch.no_grad()
def predict_logits(module: AudioClassifier, loader: DataLoader, device: torch.device, *, amp: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, classes], true [N])`` of every clip the loader yields."""
    module.eval()
    logits, true = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits.append(module(x.to(device, non_blocking=True)).float().cpu())
        true.append(y)
        if on_batch is not None:
            on_batch(len(y))
    return torch.cat(logits), torch.cat(true)


def predict(module: AudioClassifier, loader: DataLoader, device: torch.device, *, amp: bool = False,
            on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted, true)`` class indices of every clip the loader yields."""
    logits, true = predict_logits(module, loader, device, amp=amp, on_batch=on_batch)
    return logits.argmax(dim=-1), true


@dataclass
class EvalReport:
    """Accuracy per held-out fold, their mean, and the confusion matrix summed over folds (rows: true class)."""

    dataset: str
    checkpoint: str
    mode: str
    template: str
    labels: list[str]
    folds: list[int]
    accuracy: dict[int, float]
    clips: dict[int, int]
    mean_accuracy: float
    confusion: list[list[int]]
    query: dict[int, dict[str, dict[str, float]]] | None = None  # --task query: per fold, per direction
    mean_query: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        d["clips"] = {str(k): v for k, v in self.clips.items()}
        if self.query is None:
            del d["query"], d["mean_query"]
        else:
            d["query"] = {str(k): v for k, v in self.query.items()}
        return d


def query_metrics(scores, labels, classes: int) -> dict[str, dict]:
    """The paper's querying metrics (:mod:`audioclip.archive.metrics`) for clips with ``scores``
    ``[N, classes]`` (a clip's logit for each class text) and true classes ``labels`` ``[N]``: audio to
    text (a clip queries the class texts; one is relevant) and text to audio (a class text queries
    the clips; its clips are relevant)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    relevant = labels[:, None] == np.arange(classes)[None, :]
    return {"audio_to_text": retrieval_metrics(scores, relevant).to_json(),
            "text_to_audio": retrieval_metrics(scores.T, relevant.T).to_json()}


def checkpoint_mode(model: AudioCLIP) -> str:
    """``zero-shot`` for a release checkpoint, else the fine-tuned checkpoint's mode."""
    return model.metadata.mode if model.label_bank is not None else "zero-shot"


def evaluate(*, model: AudioCLIP, data: DatasetIndex, folds: list[int], cache: DecodeCache, template: str | None = None,
             batch_size: int = 16, workers: int = 0, device: str | torch.device = "cpu", max_bad_share: float = 0.05,
             progress: bool = True, name: str = "", query: bool = False) -> EvalReport:
    """Accuracy of ``model`` on each fold in ``folds`` of ``data`` (clips centre cropped or padded);
    with ``query`` also the paper's querying metrics (:mod:`.query`) per fold, from the same scores."""
    folds = [data.check_fold(k) for k in folds]
    device = torch.device(device)
    if template is None:
        template = model.label_bank.template if model.label_bank is not None else "{}"
    classifier = AudioClassifier.for_labels(model, data.labels, template).to(device)
    n = len(data.labels)
    confusion = torch.zeros(n, n, dtype=torch.long)
    accuracy, counts, queries = {}, {}, {}
    with progress_bar(progress) as bar:
        for fold in folds:
            test = [c for c in data.clips if c.fold == fold]
            task = bar.add_task(f"decoding fold {fold}", total=len(test))
            advance = functools.partial(bar.advance, task)
            test = prepare_clips(test, cache, max_bad_share=max_bad_share, workers=workers, on_progress=advance)
            bar.reset(task, total=len(test), description=f"evaluating fold {fold}")
            loader = make_loader(ClipDataset(test, cache, data.clip_samples), batch_size=batch_size, shuffle=False,
                                 seed=0, workers=workers)
            logits, true = predict_logits(classifier, loader, device, amp=device.type == "cuda", on_batch=advance)
            predicted = logits.argmax(dim=-1)
            if query:
                queries[fold] = query_metrics(logits.numpy(), true.numpy(), n)
            confusion += torch.bincount(true * n + predicted, minlength=n * n).reshape(n, n)
            accuracy[fold] = float((predicted == true).float().mean())
            counts[fold] = len(true)
            log.info("fold %d: accuracy %.4f on %d clips", fold, accuracy[fold], counts[fold])
    mean = sum(accuracy.values()) / len(accuracy)
    mean_query = None
    if query:
        mean_query = {d: {m: sum(q[d][m] for q in queries.values()) / len(queries) for m in ("P@1", "R@1", "mAP")}
                      for d in ("audio_to_text", "text_to_audio")}
    return EvalReport(data.name, name, checkpoint_mode(model), template, list(data.labels), folds, accuracy, counts,
                      mean, confusion.tolist(), queries if query else None, mean_query)


def write_json(obj: dict, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None


def plot_confusion(report: EvalReport, path: str | os.PathLike) -> None:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), normalised per row."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(report.confusion, dtype=torch.float64)
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    n = len(report.labels)
    size = max(4.0, 0.35 * n + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), report.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), report.labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.dataset}: mean accuracy {report.mean_accuracy:.1%}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
