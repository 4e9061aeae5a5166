"""The monitor's web page and HTTP API: :func:`create_app` builds the FastAPI application over a running monitor.

Routes are thin: they read the monitor (:mod:`.view`), its database (:class:`~audioclip.monitor.store.EventStore`)
and its configuration file (:mod:`.labels_file`); the pages are static files of the package that call the JSON
API (``/docs`` describes it). Errors are ``{"detail": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .live import END, LiveHub
from .view import HEALTHY, source_state, window_json

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files(__package__).joinpath("static")))
KEEPALIVE_SECONDS = 15.0
"""A comment line on the live stream this often when nothing else is sent (proxies close silent streams)."""


@dataclass
class WebState:
    """What the routes share: the monitor, the live hub and watch, the upload cap, the search index."""

    monitor: object
    hub: LiveHub
    watch: object | None
    upload_max_bytes: int
    _index: object = None
    _index_lock: threading.Lock = field(default_factory=threading.Lock)
    labels_lock: threading.Lock = field(default_factory=threading.Lock)  # one label change at a time

    def search_index(self, path, model: str):
        """The database as a :class:`~audioclip.monitor.index.MonitorIndex` of ``model``'s embeddings: loaded on
        the first search, then each search reads only the rows stored since (the index refreshes itself)."""
        from ..index import MonitorIndex

        with self._index_lock:
            if self._index is None:
                self._index = MonitorIndex.open(path, model=model)
            return self._index

    def close(self) -> None:
        with self._index_lock:
            if self._index is not None:
                self._index.close()
                self._index = None


def web(request: Request) -> WebState:
    return request.app.state.web


def create_app(monitor, *, hub: LiveHub | None = None, watch=None, token: str | None = None,
               cors: tuple[str, ...] = (), upload_max_mb: float = 20.0) -> FastAPI:
    """The application over ``monitor`` (a running :class:`~audioclip.monitor.service.Monitor`).

    ``hub``: where the monitor publishes its live news (a new one when None); ``watch``: the
    :class:`~audioclip.monitor.web.watch.LiveWatch` that makes the live spectrograms; ``token``: what writes and
    requests from beyond loopback must show (:mod:`.auth`); ``cors``: origins allowed to call the API.
    """
    from . import events, labels, search

    # /docs is a page of ours over /openapi.json: FastAPI's Swagger and ReDoc pages load their code from a CDN
    app = FastAPI(title="audioclip monitor", version="1", docs_url=None, redoc_url=None,
                  description="See every source live, review events with their audio, change labels while the "
                              "monitor runs, and search what was heard.")
    app.state.web = WebState(monitor, hub or LiveHub(), watch, int(upload_max_mb * 1e6))
    if token:
        from .auth import TokenMiddleware

        app.add_middleware(TokenMiddleware, token=token)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    for path, page in (("/", "live"), ("/events", "events"), ("/labels", "labels"), ("/search", "search"),
                       ("/docs", "api")):
        app.add_api_route(path, _page(page), methods=["GET"], include_in_schema=False)
    app.include_router(_router())
    app.include_router(events.router)
    app.include_router(labels.router)
    app.include_router(search.router)
    return app


def _page(name: str):
    def page() -> FileResponse:
        path = STATIC / f"{name}.html"
        if not path.is_file():
            raise HTTPException(404, f"the {name} page is not installed ({path.name} missing from the package)")
        return FileResponse(path, media_type="text/html")

    return page


def _router():
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/api/sources", summary="Every source: state, last window, counters, last event")
    def sources(request: Request) -> list[dict]:
        monitor = web(request).monitor
        last_events = _last_events(request)
        out = []
        for p in monitor.pipelines:
            state, retry = source_state(p)
            counters = monitor.scheduler.counters(p.name)
            last = None if p.last is None else {k: v for k, v in window_json(p.name, p.last).items() if k != "source"}
            out.append({"name": p.name, "state": state, "retry_in_s": retry, "labels": list(p.labels), "last": last,
                        "counters": {"windows": p.windows, "dropped": counters.dropped, "gated": p.gated,
                                     "overflows": p.source.overflows, "events": p.events,
                                     "reconnects": getattr(p.source, "reconnects", 0)},
                        "last_event": last_events.get(p.name)})
        return out

    @router.get("/api/sources/{name}/spectrogram.png", summary="The last 10 s of a source's dB front end (live)",
                response_class=Response)
    def live_spectrogram(name: str, request: Request) -> Response:
        state = web(request)
        if name not in {p.name for p in state.monitor.pipelines}:
            raise HTTPException(404, f"no source named {name!r}")
        image = None if state.watch is None else state.watch.image(name)
        if image is None:
            raise HTTPException(404, f"no spectrogram of {name} yet: it is made while a live page listens")
        return Response(image[1], media_type="image/png", headers={"Cache-Control": "no-store"})

    @router.get("/api/live", summary="Server-sent events: windows, events, states, labels, spectrograms",
                response_class=StreamingResponse)
    async def live(request: Request) -> StreamingResponse:
        hub = web(request).hub
        subscriber = hub.subscribe(asyncio.get_running_loop())

        async def stream():
            try:
                yield "retry: 2000\n\n"
                while (text := await subscriber.next(KEEPALIVE_SECONDS)) != END:
                    yield ": keep-alive\n\n" if text is None else f"data: {text}\n\n"
            finally:
                hub.unsubscribe(subscriber)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @router.get("/healthz", summary="200 while every enabled source is up or reconnecting within its backoff")
    def healthz(request: Request) -> JSONResponse:
        states = {p.name: source_state(p)[0] for p in web(request).monitor.pipelines}
        ok = all(state in HEALTHY for state in states.values())
        return JSONResponse({"ok": ok, "sources": states}, status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics (with [metrics] on)", response_class=Response)
    def metrics(request: Request) -> Response:
        m = web(request).monitor.metrics
        if m is None:
            raise HTTPException(404, "metrics are off: add a [metrics] table or --metrics HOST:PORT")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _last_events(request: Request) -> dict[str, dict]:
    """Each source's newest stored event."""
    from .view import event_json

    store = store_of(request, required=False)
    if store is None:
        return {}
    out = {}
    for p in web(request).monitor.pipelines:
        rows, _ = store.query_events(source=p.name, limit=1)
        if rows:
            out[p.name] = event_json(rows[0])
    return out


def store_of(request: Request, *, required: bool = True):
    """The monitor's database, or a 404 saying how to turn it on."""
    sink = web(request).monitor.store_sink
    if sink is None:
        if required:
            raise HTTPException(404, "no event database: add a [store] table or --db FILE")
        return None
    return sink.store
