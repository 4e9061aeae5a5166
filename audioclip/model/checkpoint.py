"""Checkpoints: the release registry, download and cache, strict loading, and this project's own format."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .audioclip import AudioCLIP, LabelBank
from .config import AudioCLIPConfig, infer_config

log = logging.getLogger(__name__)

FINETUNED_FORMAT = "audioclip-stream/finetuned"
FINETUNED_FORMAT_VERSION = 1


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

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or expected_size)
            columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                while block := response.read(1 << 20):
                    out.write(block)
                    progress.advance(task, len(block))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    verified.write_text(release.sha256 + "\n")
    return path


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, Any]:
    """``torch.load(weights_only=True)`` with one clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: wrap them all with the file's name
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, or another kind of file); "
                              f"fetch or write it again ({type(e).__name__}: {detail})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or an audioclip-stream checkpoint")
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
        raise CheckpointError(f"unknown checkpoint {source!r}: not a file, and the known releases are {', '.join(RELEASES)}")
    else:
        path = Path(source)
    obj = read_checkpoint(path)
    if obj.get("format") == FINETUNED_FORMAT:
        model = _from_finetuned(obj, str(path))
    else:
        model = model_from_state_dict(obj, name=str(path))
        model.metadata = {"source": {"name": str(source), "path": str(path)}}
    return model.to(device)


def _from_finetuned(obj: Mapping[str, Any], name: str) -> AudioCLIP:
    try:
        config = AudioCLIPConfig.from_dict(obj["config"])
        model = model_from_state_dict(obj["state_dict"], config, name)
        model.label_bank = LabelBank(list(obj["labels"]), obj["label_embeddings"].float(), obj.get("template", "{}"))
    except KeyError as e:
        raise CheckpointError(f"{name}: fine-tuned checkpoint lacks {e}") from e
    model.metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "label_embeddings")}
    return model


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode open() would
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def audio_head_state(model: AudioCLIP) -> tuple[AudioCLIPConfig, dict[str, torch.Tensor]]:
    """Config and state dict of ``model`` without its image and text towers (audio head and logit scales)."""
    config = AudioCLIPConfig(embed_dim=model.config.embed_dim, audio=model.config.audio, vision=None, text=None)
    state = {k: v for k, v in model.state_dict().items()
             if k.startswith("audio.") or k in ("logit_scale_ai", "logit_scale_at")}
    return config, state


def finetuned_checkpoint(model: AudioCLIP, labels: list[str], label_embeddings: torch.Tensor, **metadata: Any) -> dict:
    """The self-describing dict of a fine-tuned audio head (see ``save`` with ``atomic_save``).

    Holds the audio head and logit scales, the labels with their normalised embeddings, and
    ``metadata`` (template, sample rate, clip samples, mode, fold, metrics, package version, source).
    """
    config, state = audio_head_state(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    embeddings = label_embeddings.detach().float().cpu()
    embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    return {"format": FINETUNED_FORMAT, "format_version": FINETUNED_FORMAT_VERSION, "config": config.to_dict(),
            "state_dict": state, "labels": list(labels), "label_embeddings": embeddings, **metadata}
