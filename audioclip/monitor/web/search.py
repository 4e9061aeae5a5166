"""``/api/search``: past moments and events ranked by how well they match a description, a clip or an image
(AudioCLIP's three modalities), with the search of ``audioclip-search --db`` (one implementation:
:class:`~audioclip.monitor.index.MonitorIndex`) and the monitor's own model to embed the query.

Uploads are capped at ``[http] upload_max_mb`` (413 above, checked while the body arrives); an upload is
decoded as audio by the project's loader, else as an image by Pillow with a pixel limit; anything else is
415 with a one-line message.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from starlette.requests import Request as StarletteRequest

from .app import store_of, web

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/search", tags=["search"])

MAX_IMAGE_PIXELS = 40_000_000
"""The largest image an upload may decode to (a 20 MB file can hold a decompression bomb)."""


# -- the query's embedding with the monitor's model ------------------------------------------------------

class QueryEmbedder:
    """Text, audio and image queries as normalised embeddings of the model the monitor runs: the PyTorch
    checkpoint's towers (:class:`~audioclip.search.query.QueryEncoder`), or an ONNX export's text and audio
    encoders (an export has no image tower)."""

    def __init__(self, classifier, window: float):
        self.window = window
        model = getattr(classifier, "model", None)
        self._torch = None
        self._folder = None
        self._threads = getattr(classifier, "threads", None)
        if model is not None and hasattr(model, "encode_audio"):
            from ...search.query import QueryEncoder

            self._torch = QueryEncoder(None, model=model)
        else:
            self._folder = Path(classifier.folder)
            self._window_samples = getattr(classifier, "window_samples", None)

    def text(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ValueError("the query is empty: describe the sound, e.g. glass breaking")
        if self._torch is not None:
            return self._torch.text(text)
        from ...export.runtime import embed_labels

        return _unit(embed_labels(self._folder, [text], threads=self._threads)[0])

    def audio(self, path: Path) -> np.ndarray:
        if self._torch is not None:
            return self._torch.audio(path, window=self.window)
        from ...audio import load_audio
        from ...export.runtime import ENCODER_FILE, session

        samples = load_audio(path)
        n = self._window_samples or int(round(self.window * 44100))
        count = max(1, len(samples) // n)
        windows = np.zeros((count, n), np.float32)
        for i in range(count):
            chunk = samples[i * n:(i + 1) * n]
            windows[i, :len(chunk)] = chunk
        (rows,) = session(self._folder / ENCODER_FILE, threads=self._threads).run(["embedding"], {"waveform": windows})
        return _unit(np.mean([_unit(r) for r in rows], axis=0))

    def image(self, path: Path) -> np.ndarray:
        if self._torch is None:
            raise ValueError("an ONNX export has no image encoder: search by image needs the monitor to run a "
                             "PyTorch checkpoint")
        return self._torch.image(path)


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(-1)
    return x / np.linalg.norm(x)


def _embedder(request: Request) -> QueryEmbedder:
    monitor = web(request).monitor
    window = monitor.config.stream_config(monitor.config.enabled_sources[0]).window
    return QueryEmbedder(monitor.classifier, window)


# -- the search ---------------------------------------------------------------------------------------

def _search(request: Request, query: np.ndarray, shown, k: int, source: str | None, since: str | None) -> dict:
    store = store_of(request)
    try:
        index = web(request).search_index(store.path, web(request).monitor.embedding_model)
        hits = index.search(query, k=k, source=source, since=since)
    except ValueError as e:
        raise HTTPException(422, str(e).splitlines()[0]) from None
    return {"query": shown, "hits": [_hit_json(hit) for hit in hits]}


def _hit_json(hit) -> dict:
    """A :class:`~audioclip.monitor.index.MonitorHit` with a link to the clip that holds it instead of a path."""
    shown = hit.to_json()
    del shown["clip"]
    return {**shown, "clip_url": None if hit.clip is None else f"/api/events/{hit.event_id}/clip"}


@router.get("", summary="Moments and events that match a description")
def search_text(request: Request, q: str = Query(..., description='e.g. "glass breaking"'),
                k: int = Query(10, ge=1, le=200), source: str | None = None,
                since: str | None = Query(None, description="ISO 8601 time")) -> dict:
    try:
        query = _embedder(request).text(q)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return _search(request, query, q, k, source, since)


@router.post("", summary="Moments and events that sound like an uploaded clip, or look like an uploaded image",
             openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"}, "k": {"type": "integer"},
                                "source": {"type": "string"}, "since": {"type": "string"}}}}}}})
async def search_upload(request: Request) -> dict:
    from starlette.concurrency import run_in_threadpool

    cap = web(request).upload_max_bytes
    form_request = await _capped(request, cap)
    form = await form_request.form(max_part_size=cap + 1)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "file: missing; send the clip or image as the multipart field 'file'")
    try:
        k = int(form.get("k") or 10)
    except ValueError:
        raise HTTPException(422, f"k: must be a whole number, got {form.get('k')!r}") from None
    if not 1 <= k <= 200:
        raise HTTPException(422, f"k: must be between 1 and 200, got {k}")
    source, since = form.get("source") or None, form.get("since") or None
    data = await upload.read()
    name = upload.filename or "upload"
    query, kind = await run_in_threadpool(_embed_upload, request, data, name)
    return await run_in_threadpool(_search, request, query, {"file": name, "kind": kind}, k, source, since)


async def _capped(request: Request, cap: int) -> StarletteRequest:
    """``request`` with its body read, refused with 413 as soon as it passes ``cap`` bytes (a declared
    ``Content-Length`` over the cap is refused before reading)."""
    declared = request.headers.get("content-length")
    too_big = HTTPException(413, f"the upload is larger than the limit of {cap / 1e6:g} MB ([http] upload_max_mb)")
    if declared is not None and declared.isdigit() and int(declared) > cap + 64 * 1024:  # the form's own bytes
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap + 64 * 1024:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return StarletteRequest(request.scope, receive)


def _embed_upload(request: Request, data: bytes, name: str) -> tuple[np.ndarray, str]:
    """The upload's embedding: as audio if the project's loader reads it, else as an image if Pillow does."""
    from ...audio import AudioFileError, load_audio

    cap = web(request).upload_max_bytes
    if len(data) > cap:
        raise HTTPException(413, f"the upload is larger than the limit of {cap / 1e6:g} MB ([http] upload_max_mb)")
    embedder = _embedder(request)
    suffix = Path(name).suffix[:16] if Path(name).suffix.isascii() else ""
    fd, tmp = tempfile.mkstemp(prefix="audioclip-query-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            load_audio(tmp)
        except AudioFileError:
            pass
        else:
            try:
                return embedder.audio(Path(tmp)), "audio"
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        _check_image(tmp, name)
        try:
            return embedder.image(Path(tmp)), "image"
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_image(path: str, name: str) -> None:
    """415 unless Pillow reads ``path`` as an image; 413 when it has more than ``MAX_IMAGE_PIXELS``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise HTTPException(415, f"{name}: neither audio nor an image this server can read; upload a clip "
                                 "(WAV, FLAC, OGG, MP3) or an image (PNG, JPEG)") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise HTTPException(413, f"{name}: {width} x {height} pixels, more than the limit of "
                                 f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels; scale it down")
