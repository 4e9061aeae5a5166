"""Checkpoints: the release registry, download and cache, strict loading, and this project's own format."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..files import atomic_write, atomic_write_text
from .audioclip import AudioCLIP, LabelBank
from .config import AudioCLIPConfig, infer_config
from .metadata import CheckpointMeta

log = logging.getLogger(__name__)

FINETUNED_FORMAT = "audioclip-stream/finetuned"
FINETUNED_FORMAT_VERSION = 2
"""1 (0.1.0): metadata at the top level, a standalone head's classifier in it; 2: ``meta`` and state dict."""
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
"""State-dict keys of a standalone head's linear classifier."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not have the expected layout."""


@dataclass(frozen=True)
class Release:
    url: str
    sha256: str
    size: int


# The official releases (github.com/AndreyGuzhov/AudioCLIP, release v0.1). Hashes and sizes are
# those of the same files in the repository's Git LFS store.
RELEASES: dict[str, Release] = {
    "full": Release(
        "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/AudioCLIP-Full-Training.pt",
        "2441d35b353352c8b1bbfb8f7c687f46314c3d2909e940eaf763b8c17f632c44", 537302068),
    "partial": Release(
        "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/AudioCLIP-Partial-Training.pt",
        "1921885b6c3b5de0619f2ef4a9700ecbade758a398b34eb064230c30baef0c75", 537302068),
}


def cache_dir() -> Path:
    """``$AUDIOCLIP_CACHE``, else ``$XDG_CACHE_HOME/audioclip``, else ``~/.cache/audioclip``."""
    if os.environ.get("AUDIOCLIP_CACHE"):
        return Path(os.environ["AUDIOCLIP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "audioclip"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected_size: int) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    def copy(out) -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or expected_size)
            columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                while block := response.read(1 << 20):
                    out.write(block)
                    progress.advance(task, len(block))

    atomic_write(dest, copy)


def resolve_release(name: str, download: bool = True) -> Path:
    """Path of a release in the cache, downloading and verifying it when absent."""
    if name not in RELEASES:
        raise CheckpointError(f"unknown release {name!r}; known releases: {', '.join(RELEASES)} (or pass a file path)")
    release = RELEASES[name]
    path = cache_dir() / Path(release.url).name
    verified = path.with_name(path.name + ".sha256")
    if path.exists() and verified.exists() and verified.read_text().strip() == release.sha256:
        return path
    if not path.exists():
        if not download:
            raise CheckpointError(f"release {name!r} is not cached; fetch {release.url} and put it at {path}")
        try:
            _download(release.url, path, release.size)
        except OSError as e:
            raise CheckpointError(
                f"cannot download release {name!r} ({e}); fetch {release.url} by hand and put it at {path} "
                f"(or set AUDIOCLIP_CACHE to the folder that holds it)") from e
    digest = sha256_of(path)
    if digest != release.sha256:
        raise CheckpointError(
            f"{path}: sha256 {digest} does not match release {name!r} ({release.sha256}); delete it and "
            f"fetch {release.url} again")
    atomic_write_text(verified, release.sha256 + "\n")
    return path


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    """``torch.load(weights_only=True)`` with one short error line for a missing or unreadable file.

    torch's own explanation goes to the debug log only: for a file with pickled code it advises
    loading it with ``weights_only=False``, which would run that code.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: wrap them all with the file's name
        log.debug("torch.load(%s, weights_only=True) failed: %s: %s", path, type(e).__name__, e)
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise CheckpointError(f"{path}: refused: it holds Python objects or code, not just weights; use a "
                                  f"checkpoint written by audioclip-stream or a release") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated one; download or write it "
                              f"again") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or an audioclip-stream "
                              f"checkpoint")
    return obj


def _layout_errors(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
                 for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
    return problems


def model_from_state_dict(state_dict: Mapping[str, Any], config: AudioCLIPConfig | None = None,
                          name: str = "state dict") -> AudioCLIP:
    """Build a model whose tower sizes are read off ``state_dict`` and load it strictly (fp16 -> fp32)."""
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{name}: not a state dict of tensors")
    if config is None:
        try:
            config = infer_config(state_dict)
        except (KeyError, IndexError) as e:
            expected = AudioCLIP(AudioCLIPConfig()).state_dict()
            problems = _layout_errors(state_dict, expected) or [f"cannot read tower sizes ({e})"]
            raise CheckpointError(f"{name}: not an AudioCLIP checkpoint: {'; '.join(problems)}") from e
    model = AudioCLIP(config)
    expected = model.state_dict()
    problems = _layout_errors(state_dict, expected)
    if problems:
        raise CheckpointError(f"{name}: layout does not match AudioCLIP: {'; '.join(problems)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}, strict=True)
    return model.eval()


def load_model(source: str | os.PathLike = "full", device: str | torch.device = "cpu") -> AudioCLIP:
    """Load an official release (``"full"``, ``"partial"``), an official file, or a fine-tuned checkpoint.

    Returns the model in eval mode on ``device``. A fine-tuned checkpoint gives an audio-only
    model whose ``label_bank`` holds its labels and ``metadata`` the rest of what it describes.
    """
    if isinstance(source, str) and source in RELEASES:
        path = resolve_release(source)
    elif isinstance(source, str) and not Path(source).exists() and os.sep not in source and not source.endswith(".pt"):
        raise CheckpointError(f"unknown checkpoint {source!r}: not a file, and the known releases are "
                              f"{', '.join(RELEASES)}")
    else:
        path = Path(source)
    obj = read_checkpoint(path)
    if obj.get("format") == FINETUNED_FORMAT:
        model = _from_finetuned(obj, str(path))
    else:
        model = model_from_state_dict(obj, name=str(path))
    return model.to(device)


def _from_finetuned(obj: Mapping[str, Any], name: str) -> AudioCLIP:
    version = obj.get("format_version")
    if version not in (1, FINETUNED_FORMAT_VERSION):
        raise CheckpointError(f"{name}: fine-tuned checkpoint format {version!r} is newer than this audioclip-stream "
                              f"reads ({FINETUNED_FORMAT_VERSION}); upgrade audioclip-stream")
    try:
        state = dict(obj["state_dict"])
        if version == 1:  # 0.1.0: metadata at the top level, a standalone classifier inside it
            legacy = {k: v for k, v in obj.items() if k not in ("state_dict", "label_embeddings", "labels", "config")}
            meta = CheckpointMeta.from_dict(legacy)
            if isinstance(legacy.get("classifier"), Mapping):
                state.update({key: legacy["classifier"][key.split(".")[1]] for key in CLASSIFIER_KEYS})
        else:
            meta = CheckpointMeta.from_dict(obj["meta"])
        linear = tuple(state.pop(key).float() for key in CLASSIFIER_KEYS) if CLASSIFIER_KEYS[0] in state else None
        config = AudioCLIPConfig.from_dict(obj["config"])
        model = model_from_state_dict(state, config, name)
        model.label_bank = LabelBank(list(obj["labels"]), obj["label_embeddings"].float(), meta.template, linear)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{name}: fine-tuned checkpoint is incomplete or damaged ({type(e).__name__}: {e}); "
                              f"write it again") from e
    if meta.mode == "standalone" and linear is None:
        raise CheckpointError(f"{name}: standalone checkpoint lacks its classifier weights; write it again")
    model.metadata = meta
    return model


def source_info(source: str | os.PathLike) -> tuple[str, str]:
    """``(name, sha256)`` of a checkpoint: a release name (from the cache) or a file."""
    path = resolve_release(source, download=False) if isinstance(source, str) and source in RELEASES else Path(source)
    return str(source), sha256_of(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def audio_head_state(model: AudioCLIP) -> tuple[AudioCLIPConfig, dict[str, torch.Tensor]]:
    """Config and state dict of ``model`` without its image and text towers (audio head and logit scales)."""
    config = AudioCLIPConfig(embed_dim=model.config.embed_dim, audio=model.config.audio, vision=None, text=None)
    state = {k: v for k, v in model.state_dict().items()
             if k.startswith("audio.") or k in ("logit_scale_ai", "logit_scale_at")}
    return config, state


def finetuned_checkpoint(model: AudioCLIP, labels: list[str], label_embeddings: torch.Tensor,
                         meta: CheckpointMeta | None = None, *,
                         classifier: tuple[torch.Tensor, torch.Tensor] | None = None, **fields: Any) -> dict:
    """The self-describing dict of a fine-tuned audio head (write it with ``atomic_save``).

    Holds the audio head and logit scales, a standalone head's ``classifier`` (weight ``[L, F]``,
    bias ``[L]``) under ``classifier.*`` in the state dict, the labels with their normalised
    embeddings, and ``meta`` (or a :class:`CheckpointMeta` made of ``fields``) under ``meta``.
    """
    meta = CheckpointMeta(**fields) if meta is None else meta
    config, state = audio_head_state(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    if classifier is not None:
        state.update({key: t.detach().float().cpu().clone() for key, t in zip(CLASSIFIER_KEYS, classifier)})
    embeddings = label_embeddings.detach().float().cpu()
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return {"format": FINETUNED_FORMAT, "format_version": FINETUNED_FORMAT_VERSION, "config": config.to_dict(),
            "state_dict": state, "labels": list(labels), "label_embeddings": embeddings, "meta": meta.to_dict()}
