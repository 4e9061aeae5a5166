"""``/api/labels``: the monitor's labels with their prompts, settings and record; add, change and remove them
while it runs.

A change is made to the monitor's ``monitor.toml`` (:class:`~audioclip.monitor.web.labels_file.LabelsFile`: comments
and layout kept), validated as the monitor validates the file (a bad value is a 422 with the same one-line
message), written atomically, and applied the way SIGHUP applies it: a new label is embedded once by the text
encoder and scored from the next window; labels left as they were keep their open events. A monitor started
without a ``--config`` file has nothing to write: 409.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response

from ..config import ConfigError
from .app import store_of, web
from .labels_file import FIELDS, LabelNotFound, LabelsFile

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/labels", tags=["labels"])


def _stats(request: Request) -> tuple[dict, dict]:
    store = store_of(request, required=False)
    if store is None:
        return {}, {}
    day = datetime.now(timezone.utc) - timedelta(days=1)
    return store.label_stats(day), store.label_stats(None)


def _label_json(monitor, name: str, recent: dict, ever: dict) -> dict:
    config = monitor.config
    d = config.defaults
    label = next((x for x in config.labels if x.name == name), None)
    day, total = recent.get(name, {}), ever.get(name, {})
    reviewed, wrong = total.get("reviewed", 0), total.get("wrong", 0)
    out = {"name": name, "prompts": [name], "threshold": d.threshold, "hysteresis": d.hysteresis,
           "min_windows": d.min_windows, "event": True, "privacy": False}
    if label is not None:
        out.update(prompts=list(label.prompts), event=label.event, privacy=label.privacy,
                   **{k: getattr(label, k) for k in ("threshold", "hysteresis", "min_windows")
                      if getattr(label, k) is not None})
    return {**out, "events_24h": day.get("events", 0), "reviewed": reviewed,
            "wrong_share": None if not reviewed else round(wrong / reviewed, 4)}


@router.get("", summary="The labels, their settings, events in the last 24 h and share of reviews marked wrong")
def labels(request: Request) -> list[dict]:
    monitor = web(request).monitor
    recent, ever = _stats(request)
    return [_label_json(monitor, name, recent, ever) for name in monitor.labels]


def _fields(body: dict) -> dict:
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object of label fields")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise HTTPException(422, f"unknown field {unknown[0]!r}; a label has {', '.join(FIELDS)}")
    return body


def _change(request: Request, edit) -> None:
    """Apply ``edit(file)`` to the monitor's configuration file, validate, write it and reload the monitor."""
    monitor = web(request).monitor
    if monitor.config_path is None:
        raise HTTPException(409, "this monitor was started without --config FILE: there is no file to keep labels "
                                 "in; start it with --config monitor.toml to edit labels here")
    with web(request).labels_lock:  # read, validate, write, apply: one change at a time
        try:
            file = LabelsFile(monitor.config_path)
            before = file.text()
            edit(file)
            config = file.check()
        except ConfigError as e:
            raise HTTPException(422, str(e)) from None
        except OSError as e:
            raise HTTPException(500, f"{monitor.config_path}: cannot read it ({e.strerror or e})") from None
        except ValueError as e:  # tomlkit: a value TOML cannot hold (null in a list, a nested object)
            raise HTTPException(422, f"cannot write that to TOML: {e}") from None
        try:
            file.save()
        except OSError as e:
            raise HTTPException(500, f"{file.path}: cannot write it ({e.strerror or e}); nothing changed") from None
        try:
            monitor.reload_config(config)
        except Exception as e:  # the model refused it (e.g. an export without a text encoder): put the file back
            from ...files import atomic_write_text

            atomic_write_text(file.path, before)
            raise HTTPException(422, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


@router.get("/calibration", summary="Thresholds for a target of false alarms per hour on the stored moments")
def calibration(request: Request, alarms_per_hour: float = Query(1.0, gt=0),
                since: str | None = Query(None, description="ISO 8601 time; default: every stored moment")) -> dict:
    """The proposals of ``audioclip-stream --calibrate`` (:func:`audioclip.monitor.calibrate.calibrate`) with the
    running model; apply one with ``PATCH /api/labels/{name}`` and its ``threshold``. ``warning``: what a history
    under ``min_hours`` source-hours means for them (null from ``min_hours`` on)."""
    from dataclasses import asdict

    from ..calibrate import MIN_HOURS, calibrate, short_history

    monitor = web(request).monitor
    try:
        proposals, history = calibrate(monitor.config, alarms_per_hour=alarms_per_hour, since=since,
                                       classifier=monitor.classifier, store=store_of(request))
    except ValueError as e:
        raise HTTPException(422, str(e).splitlines()[0]) from None
    warning = short_history(history.hours, alarms_per_hour)
    return {"alarms_per_hour": alarms_per_hour, "hours": round(history.hours, 4), "min_hours": MIN_HOURS,
            "warning": warning, "proposals": [asdict(p) for p in proposals]}


@router.post("", status_code=201, summary="Add a label (name and prompts required); it applies from the next window")
def add(request: Request, body: Annotated[dict, Body(examples=[{"name": "glass", "prompts": ["glass breaking"]}])]):
    fields = _fields(body)
    for key in ("name", "prompts"):
        if key not in fields:
            raise HTTPException(422, f"{key}: missing; a new label needs a name and prompts")
    _change(request, lambda file: file.add(fields))
    recent, ever = _stats(request)
    return _label_json(web(request).monitor, str(fields["name"]), recent, ever)


@router.patch("/{name}", summary="Change a label's prompts or settings (null: back to the default)")
def change(name: str, request: Request, body: Annotated[dict, Body(examples=[{"threshold": 0.4}])]):
    fields = _fields(body)
    if "name" in fields and fields["name"] != name:
        raise HTTPException(422, "name: a label cannot be renamed; add a new one and remove this one")

    def edit(file: LabelsFile) -> None:
        try:
            file.update(name, {k: v for k, v in fields.items() if k != "name"})
        except LabelNotFound:
            raise HTTPException(404, f"no label {name!r} in {file.path}") from None

    _change(request, edit)
    recent, ever = _stats(request)
    return _label_json(web(request).monitor, name, recent, ever)


@router.delete("/{name}", status_code=204, response_class=Response, summary="Remove a label")
def remove(name: str, request: Request) -> Response:
    def edit(file: LabelsFile) -> None:
        try:
            file.remove(name)
        except LabelNotFound:
            raise HTTPException(404, f"no label {name!r} in {file.path}") from None

    _change(request, edit)
    return Response(status_code=204)
