"""Labelling on Ray Data: the recording list as a dataset, ``map_batches`` over an actor pool whose
actors each hold a classifier, decode whole recordings as a stream and write their parts.

The parts go to the same output folder as the local pool's, so on a cluster ``--out`` must be a
folder every node sees (a shared filesystem); the driver records the manifest and merges, as the
local pool does, and the outputs are identical to it.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from .job import ModelSpec

log = logging.getLogger(__name__)


def require_ray():
    try:
        import ray
    except ImportError as e:
        raise ValueError("--ray needs Ray: pip install 'audioclip-stream[ray]' (or 'audioclip-stream[archive]')") from e
    return ray


class _LabelActor:
    """One classifier per actor; labels the recordings of a batch and returns their outcomes."""

    def __init__(self, spec: ModelSpec, settings, out: str):
        from .runner import _worker
        from .store import ArchiveStore

        _worker.update(classifier=spec.load(), settings=settings, store=ArchiveStore(out))

    def __call__(self, batch: dict) -> dict:
        import json

        from .runner import _label_one

        outcomes = [_label_one(str(path)) for path in batch["path"]]
        return {"path": [o[0] for o in outcomes], "entry": [json.dumps(o[1]) for o in outcomes],
                "error": [o[2] or "" for o in outcomes], "busy": [o[3] for o in outcomes]}


def label_on_ray(todo: list[str], *, spec: ModelSpec, settings, out: str, actors: int, address: str | None,
                 finished: Callable) -> None:
    """Label ``todo`` on ``actors`` Ray actors (``spec.threads`` CPUs each), calling ``finished`` on
    the driver for each recording as its result arrives. ``address``: a cluster (``ray://...`` or
    ``HOST:PORT``); None joins ``RAY_ADDRESS`` or starts a local Ray."""
    import json

    ray = require_ray()
    started_here, context, bars = False, None, None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        bars, context.enable_progress_bars = context.enable_progress_bars, False  # the caller reports progress
        threads = spec.threads or 2
        data = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=max(1, len(todo)))
        results = data.map_batches(_LabelActor, fn_constructor_args=(spec, settings, out), batch_size=1,
                                   compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                                   batch_format="numpy")
        for row in results.iter_rows():
            entry = json.loads(row["entry"])
            finished(str(row["path"]), entry, row["error"] or None, float(row["busy"]))
    finally:
        if context is not None:
            context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()
