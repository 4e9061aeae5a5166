"""The background bank of label scores: a few hundred generic sound descriptions shipped in this package
(``background.txt``), and their embeddings by a model's text tower, computed once per text tower and template
and kept in memory and in the cache folder (``$AUDIOCLIP_CACHE/background``). ``audioclip-export onnx`` writes
them into an export (``background.npz``) so the ONNX path needs no torch. What the scores make of them:
:mod:`audioclip.stream.scoring` and docs/scores.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

BANK_FILE = "background.txt"
EXPORT_FILE = "background.npz"
"""The bank's embeddings in an ONNX export folder: ``embeddings [M, D]``, ``texts [M]``, ``template``."""


def bank_texts() -> list[str]:
    """The background bank's descriptions, in file order."""
    text = resources.files(__package__).joinpath(BANK_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


cache: dict[tuple, np.ndarray] = {}
"""Bank embeddings by key, for this process (the ONNX path keeps its own here too)."""
cache_lock = threading.Lock()


def bank_digest(texts: Sequence[str], template: str) -> str:
    return hashlib.sha256(("\n".join(texts) + "\0" + template).encode("utf-8")).hexdigest()


def _text_tower_fingerprint(model) -> str:
    """What identifies a text tower's weights, cheaply: its projection, final norm and positions."""
    digest = hashlib.sha256()
    for tensor in (model.text_projection, model.ln_final.weight, model.ln_final.bias, model.positional_embedding):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def torch_bank(model, template: str = "{}") -> np.ndarray:
    """The bank's normalised embeddings ``[M, D]`` (float32) by ``model``'s text tower with ``template``: from
    memory, else the cache folder (``$AUDIOCLIP_CACHE/background``), else computed (and cached)."""
    import torch

    from .audioclip import normalize
    from .checkpoint import cache_dir

    texts = bank_texts()
    key = hashlib.sha256((_text_tower_fingerprint(model) + bank_digest(texts, template)).encode()).hexdigest()
    with cache_lock:
        if key in cache:
            return cache[key]
        file = cache_dir() / "background" / f"{key[:32]}.npy"
        bank = _read_cached(file, len(texts))
        if bank is None:
            log.info("embedding the %d background descriptions of label scores once for this model and template",
                     len(texts))
            with torch.inference_mode():
                bank = normalize(model.encode_text(texts, template).float()).cpu().numpy()
            _write_cached(file, bank)
        cache[key] = bank
        return bank


def _read_cached(file: Path, rows: int) -> np.ndarray | None:
    try:
        bank = np.load(file)
    except (OSError, ValueError):
        return None
    return bank if bank.ndim == 2 and len(bank) == rows and bank.dtype == np.float32 else None


def _write_cached(file: Path, bank: np.ndarray) -> None:
    from ..files import atomic_write

    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, lambda f: np.save(f, bank), durable=False)
    except OSError as e:  # a read-only home: computed again next time
        log.info("the background bank's embeddings are not cached (%s): %s", file, e)


def write_export_bank(folder: str | os.PathLike, embeddings: np.ndarray, template: str) -> str:
    """Write the bank's embeddings for ``template`` into an export folder; returns the file name."""
    np.savez(Path(folder) / EXPORT_FILE, embeddings=np.asarray(embeddings, np.float32),
             texts=np.array(bank_texts()), template=np.array(template))
    return EXPORT_FILE
