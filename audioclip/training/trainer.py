"""Fine-tuning with the paper's recipe: epochs, checkpoints, resume, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from ..model import CheckpointMeta, atomic_save, check_template, load_model, source_info
from ..model.checkpoint import read_checkpoint
from .audio_io import DecodeCache
from .augment import Augmentation
from .batchnorm import BN_MODES, recalibrate, train_mode
from .datasets import DatasetIndex
from .evaluate import predict, progress_bar, write_json
from .heads import MODES, AudioClassifier, audio_only, label_embeddings
from .loader import ClipDataset, check_classes, make_loader, prepare_clips
from .losses import fbsp_weight_norm_loss, normalize_fbsp_gradients

log = logging.getLogger(__name__)

STATE_FORMAT = "audioclip-stream/training-state"
FREEZE = ("none", "trunk")
"""``--freeze``: ``trunk`` trains only what follows the pooled features (a linear probe; docs/training.md)."""
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")


class TrainingError(ValueError):
    """A run cannot start or resume as asked."""


@dataclass(frozen=True)
class Recipe:
    """The paper's fine-tuning recipe (section 4); every field is a default of ``audioclip-train finetune``."""

    mode: str = "cooperative"
    epochs: int = 50
    batch_size: int = 64
    lr: float = 5e-5
    gamma: float = 0.98
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    template: str = "{}"
    bn: str = "batch"
    freeze: str = "none"
    augment: bool = True

    def check(self) -> Recipe:
        if self.mode not in MODES:
            raise TrainingError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.bn not in BN_MODES:
            raise TrainingError(f"unknown batch-norm mode {self.bn!r}; choose one of {', '.join(BN_MODES)}")
        if self.freeze not in FREEZE:
            raise TrainingError(f"unknown --freeze {self.freeze!r}; choose one of {', '.join(FREEZE)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 < self.gamma <= 1:
            raise TrainingError(f"need lr > 0 and 0 < gamma <= 1, got lr {self.lr}, gamma {self.gamma}")
        check_template(self.template)
        return self


@dataclass(frozen=True)
class Runtime:
    """Where and how a run executes (none of it changes the result on one device)."""

    device: str = "auto"
    workers: int = 0
    max_bad_share: float = 0.05
    progress: bool = True


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` where PyTorch sees a CUDA GPU, else ``cpu``; a CUDA device without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    return device


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; joins the torchrun process group when ``WORLD_SIZE`` > 1."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return rank, world, torch.device(device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sum(*values: float, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def training_step(net, audio, optimizer, x: torch.Tensor, y: torch.Tensor, *, amp: bool):
    """One optimiser step of the recipe: cross-entropy over the label logits plus the FBSP norm term.

    ``net(x, weights)`` gives logits (``net`` may be the DDP wrapper); ``audio`` is the audio head
    whose FBSP weights are built once and shared by the spectrogram and the norm term. Returns
    ``(logits, loss)``.
    """
    weights = audio.fbsp.weights()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(x, weights)
    loss = F.cross_entropy(logits.float(), y) + fbsp_weight_norm_loss(weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def _check_out(out: Path, resume: bool) -> dict | None:
    """The saved state to resume from, or None for a fresh run; refuses to overwrite an existing run.

    A run exists once an epoch has finished (``last.pt``): one interrupted in its first epoch
    leaves nothing worth keeping, and a fresh start replaces what it left.
    """
    if not resume:
        present = [name for name in RUN_FILES if (out / name).exists()]
        if (out / "last.pt").exists():
            raise TrainingError(f"{out} already holds a run ({', '.join(present)}); pass --resume to continue it "
                                f"or choose another --out")
        return None
    if not (out / "last.pt").is_file():
        raise TrainingError(f"{out / 'last.pt'}: nothing to resume (no epoch has finished); "
                            f"start the run again without --resume")
    state = read_checkpoint(out / "last.pt")
    if state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{out / 'last.pt'}: not a training state written by audioclip-train")
    return dict(state)


def _check_resumable(state: dict, recipe: Recipe, data: DatasetIndex, fold: int, source: dict, path: Path) -> None:
    saved = {"bn": "batch", "freeze": "none", "augment": True, **state["recipe"], "epochs": recipe.epochs}  # older
    expected = {"recipe": asdict(recipe), "dataset": data.name, "fold": fold, "labels": data.labels,
                "source": source["sha256"], "clip_samples": data.clip_samples}
    found = {"recipe": saved, "dataset": state["dataset"], "fold": state["fold"], "labels": state["labels"],
             "source": state["source"]["sha256"], "clip_samples": state["clip_samples"]}
    for key in expected:
        if expected[key] != found[key]:
            if key == "recipe":
                diff = [f"{k} {found[key][k]!r} -> {v!r}" for k, v in expected[key].items() if found[key].get(k) != v]
                raise TrainingError(f"{path}: run was started with other settings ({', '.join(diff)}); "
                                    f"resume with the same settings")
            raise TrainingError(f"{path}: run was started with another {key}; resume with the same one")


def _decode(clips: list, what: str, data: DatasetIndex, fold: int, cache: DecodeCache, runtime: Runtime,
            rank: int) -> list:
    """The clips that decode, decoded into ``cache`` by rank 0 before the other ranks read it."""
    with progress_bar(runtime.progress and rank == 0) as bar:
        task = bar.add_task(f"decoding {what} clips", total=len(clips))
        if rank != 0:
            _barrier()
        kept = prepare_clips(clips, cache, max_bad_share=runtime.max_bad_share, workers=runtime.workers,
                             on_progress=lambda k: bar.advance(task, k))
        if rank == 0:
            _barrier()
    check_classes(kept, data.labels, f"{data.name} fold {fold} {what} set")
    return kept


def finetune(*, source: str, data: DatasetIndex, fold: int, out: str | os.PathLike, cache: DecodeCache,
             recipe: Recipe = Recipe(), runtime: Runtime = Runtime(), resume: bool = False) -> dict:
    """Fine-tune ``source`` on every fold of ``data`` but ``fold`` and test on ``fold`` after each epoch.

    Writes ``metrics.jsonl``, ``last.pt`` (the training state ``resume`` continues from) and
    ``best.pt`` (the self-describing checkpoint with the best held-out accuracy) under ``out``.
    Under torchrun every rank trains its shard and rank 0 writes. Returns the final epoch's record
    with ``best_val_acc`` and ``best_epoch``.
    """
    recipe.check()
    data.check_fold(fold)
    out = Path(out)
    rank, world, device = init_distributed(runtime.device)
    state = _check_out(out, resume)
    model = load_model(source)
    source_name, source_sha256 = source_info(source)
    source_meta = {"name": source_name, "sha256": source_sha256}
    if state is not None:
        _check_resumable(state, recipe, data, fold, source_meta, out / "last.pt")

    train_clips, test_clips = (_decode(clips, what, data, fold, cache, runtime, rank)
                               for what, clips in zip(("train", "test"), data.split(fold)))

    torch.manual_seed(recipe.seed)
    embeddings = label_embeddings(model, data.labels, recipe.template)
    # The trunk runs channels-last: weights in that layout too, so that their gradients match DDP's buckets.
    net = AudioClassifier(audio_only(model), embeddings, recipe.mode).to(device, memory_format=torch.channels_last)
    del model
    audio = net.model.audio
    if recipe.freeze == "trunk":
        net.freeze_trunk()
    hooks = [] if recipe.freeze == "trunk" else normalize_fbsp_gradients(audio)
    bn = "frozen" if recipe.freeze == "trunk" else recipe.bn  # a frozen trunk's statistics stay as well
    optimizer = torch.optim.SGD(net.parameter_groups(recipe.weight_decay), lr=recipe.lr, momentum=recipe.momentum,
                                nesterov=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=recipe.gamma)
    start, best_acc, best_epoch = 0, -1.0, 0
    if state is not None:
        net.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start, best_acc, best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
        log.info("resuming %s from epoch %d of %d", out, start, recipe.epochs)
    records = read_metrics(out)[:start] if state is not None else []
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if records:  # the finished epochs' lines; a fresh run's file appears with its first epoch
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            (out / "metrics.jsonl").unlink(missing_ok=True)
    ddp = net
    if world > 1:
        ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    amp = device.type == "cuda"
    train_set = ClipDataset(train_clips, cache, data.clip_samples, Augmentation() if recipe.augment else None,
                            recipe.seed)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, batch_size=recipe.batch_size, shuffle=True, seed=recipe.seed,
                               workers=runtime.workers, rank=rank, world_size=world, pin_memory=pin)
    test_loader = make_loader(ClipDataset(test_clips, cache, data.clip_samples), batch_size=recipe.batch_size,
                              shuffle=False, seed=recipe.seed, workers=runtime.workers, rank=rank, world_size=world,
                              pin_memory=pin)
    calibration_loader = make_loader(ClipDataset(train_clips, cache, data.clip_samples), batch_size=recipe.batch_size,
                                     shuffle=False, seed=recipe.seed, workers=runtime.workers, rank=rank,
                                     world_size=world, pin_memory=pin)
    watch = LearningWatch(len(data.labels))
    meta = CheckpointMeta(mode=recipe.mode, template=recipe.template, dataset=data.name, fold=fold,
                          clip_samples=data.clip_samples, recipe=asdict(recipe), source_name=source_name,
                          source_sha256=source_sha256, version=__version__)
    record = records[-1] if records else {}
    try:
        for epoch in range(start, recipe.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_set.epoch = epoch
            train_loader.sampler.set_epoch(epoch)
            train_mode(ddp, bn)
            loss_sum = correct = seen = 0.0
            with progress_bar(runtime.progress and rank == 0, "loss", "samples/s") as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=len(train_loader.sampler),
                                    loss="-", **{"samples/s": "-"})
                for x, y in train_loader:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    logits, loss = training_step(ddp, audio, optimizer, x, y, amp=amp)
                    net.keep_logit_scale_in_range()
                    loss_sum += float(loss.detach()) * len(y)
                    correct += float((logits.detach().argmax(dim=-1) == y).sum())
                    seen += len(y)
                    rate = seen * world / (time.perf_counter() - t0)
                    bar.update(task, advance=len(y), loss=f"{loss_sum / seen:.4f}", **{"samples/s": f"{rate:.1f}"})
            scheduler.step()
            loss_sum, correct, seen = _sum(loss_sum, correct, seen, device=device)
            train_seconds = time.perf_counter() - t0
            if bn == "recalibrate":
                recalibrate(net, (x for x, _ in calibration_loader), device)
            predicted, true = predict(net, test_loader, device, amp=amp)
            val_correct, val_seen = _sum(float((predicted == true).sum()), float(len(true)), device=device)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                      "val_acc": val_correct / val_seen, "lr": lr, "seconds": time.perf_counter() - t0,
                      "samples_per_s": seen / train_seconds, "train_samples": int(seen), "val_samples": int(val_seen)}
            if record["val_acc"] > best_acc:
                best_acc, best_epoch = record["val_acc"], epoch + 1
                if rank == 0:
                    atomic_save(net.checkpoint(data.labels, replace(meta, epoch=epoch + 1, metrics=record)),
                                out / "best.pt")
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                atomic_save(_state(net, optimizer, scheduler, recipe, data, fold, source_meta, epoch + 1,
                                   best_acc, best_epoch, device), out / "last.pt")
                log.info("epoch %d/%d: train loss %.4f, train acc %.3f, val acc %.3f, %.0f s",
                         epoch + 1, recipe.epochs, record["train_loss"], record["train_acc"], record["val_acc"],
                         record["seconds"])
                if watch.stuck(record["train_loss"]):
                    log.warning(watch.advice(recipe))
            _barrier()
    finally:
        for hook in hooks:
            hook.remove()
    return {**record, "best_val_acc": best_acc, "best_epoch": best_epoch}


class LearningWatch:
    """Notices a training loss that stays at the value of uniform predictions, ln(classes), epoch after epoch."""

    def __init__(self, classes: int, epochs: int = 2, tolerance: float = 0.05):
        self.uniform = math.log(classes)
        self.epochs, self.tolerance = epochs, tolerance
        self.run = 0

    def stuck(self, train_loss: float) -> bool:
        """True when this epoch's loss is the ``epochs``-th in a row within ``tolerance`` (relative) of ln(classes)
        (once per such stretch: the log says it once)."""
        self.run = self.run + 1 if abs(train_loss - self.uniform) <= self.tolerance * self.uniform else 0
        return self.run == self.epochs

    def advice(self, recipe: Recipe) -> str:
        probe = "--freeze trunk --lr 3e-3 --no-augment (a linear probe on the source's features)"
        tries = [] if recipe.freeze == "trunk" else [probe]
        if recipe.lr > 1e-4:
            tries.append(f"a smaller --lr than {recipe.lr:g}")
        classes = round(math.exp(self.uniform))
        return (f"not learning: the training loss has stayed at {self.uniform:.3f} = ln {classes}, "
                f"the value of uniform predictions, for {self.run} epochs; try {' or '.join(tries) or 'more epochs'} "
                f"(docs/training.md, 'Small data sets')")


def _state(net: AudioClassifier, optimizer, scheduler, recipe: Recipe, data: DatasetIndex, fold: int, source: dict,
           epoch: int, best_acc: float, best_epoch: int, device: torch.device) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"format": STATE_FORMAT, "epoch": epoch, "recipe": asdict(recipe), "dataset": data.name, "fold": fold,
            "labels": list(data.labels), "clip_samples": data.clip_samples, "source": source,
            "module": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
            "best_val_acc": best_acc, "best_epoch": best_epoch}


def cross_validate(*, source: str, data: DatasetIndex, out: str | os.PathLike, cache: DecodeCache,
                   recipe: Recipe = Recipe(), runtime: Runtime = Runtime(), resume: bool = False) -> dict:
    """Fine-tune once per fold (under ``out/fold<K>``); write and return per-fold and mean accuracy."""
    out = Path(out)
    results = {}
    for fold in range(1, data.folds + 1):
        run = out / f"fold{fold}"
        done = read_metrics(run)
        if resume and done and done[-1]["epoch"] >= recipe.epochs and (run / "last.pt").exists():
            state = read_checkpoint(run / "last.pt")
            results[fold] = {**done[-1], "best_val_acc": state["best_val_acc"], "best_epoch": state["best_epoch"]}
            continue
        fold_resume = resume and (run / "last.pt").exists()
        results[fold] = finetune(source=source, data=data, fold=fold, out=run, cache=cache, recipe=recipe,
                                 runtime=runtime, resume=fold_resume)
    summary = {"dataset": data.name, "folds": data.folds, "mode": recipe.mode,
               "val_acc": {str(k): r["val_acc"] for k, r in results.items()},
               "best_val_acc": {str(k): r["best_val_acc"] for k, r in results.items()},
               "mean_val_acc": sum(r["val_acc"] for r in results.values()) / len(results),
               "mean_best_val_acc": sum(r["best_val_acc"] for r in results.values()) / len(results)}
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_json(summary, out / "summary.json")
    return summary
