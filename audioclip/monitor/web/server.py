"""The web page and HTTP API inside the monitor process: uvicorn on a thread of its own, over the running monitor.

The monitor makes a :class:`WebServer` after its outputs open, tells it each classified window and event
(:meth:`WebServer.window`, :meth:`WebServer.event`: they only queue JSON for the open pages) and closes it at
shutdown. The server binds its socket in :meth:`WebServer.start`, so that a port in use is an error at start.
Its access log is off: the live stream's URL may carry the token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
from datetime import datetime, timezone

from ...stream.postprocess import WindowResult
from ..config import HTTP_TOKEN_ENV, ConfigError, HttpConfig
from ..events import DetectionEvent, utc_iso
from .live import LiveHub
from .view import live_event_json, window_json

log = logging.getLogger(__name__)


class WebServer:
    """Serves :func:`~audioclip.monitor.web.app.create_app` over ``monitor`` on ``http.listen`` until :meth:`close`."""

    def __init__(self, monitor, http: HttpConfig):
        if not http.token and os.environ.get(HTTP_TOKEN_ENV):  # as the command line takes it (with_http)
            http = dataclasses.replace(http, token=os.environ[HTTP_TOKEN_ENV])
        if not http.loopback and not http.token:
            raise ConfigError("http.listen", f"{http.listen} is reachable beyond this machine: set a token "
                                             f"([http] token, --http-token or {HTTP_TOKEN_ENV}) or listen on "
                                             "127.0.0.1")
        from .app import create_app
        from .watch import LiveWatch

        self.http, self.monitor = http, monitor
        self.hub = LiveHub()
        self.watch = LiveWatch(monitor, self.hub)
        self.app = create_app(monitor, hub=self.hub, watch=self.watch, token=http.token, cors=http.cors,
                              upload_max_mb=http.upload_max_mb)
        self.host, self.port = http.host, http.port
        self._server = None
        self._thread: threading.Thread | None = None
        self._closing = self._down_logged = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> WebServer:
        self._launch()
        self.watch.start()
        if self.monitor.store_sink is not None:  # the search index loads while nobody waits for it
            threading.Thread(target=self._load_index, name="web index", daemon=True).start()
        log.info("web page and API on %s", self.url)
        return self

    def _launch(self) -> None:
        """Bind ``listen`` (one line when it cannot) and serve it on a thread of its own."""
        import uvicorn

        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as e:
            raise OSError(f"http.listen: cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", timeout_keep_alive=5,
                                timeout_graceful_shutdown=1)
        # No access log, whatever configured logging since: a live page's URL carries the token (?token=).
        logging.getLogger("uvicorn.access").disabled = True
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="web", daemon=True)
        self._thread.start()

    def ensure_running(self) -> None:
        """Serve again on the same address when the server's thread has ended without :meth:`close` (a fault in
        uvicorn): the monitor's housekeeping calls this as it restarts dead sinks. A bind that fails now is logged
        and tried again on the next call."""
        if self._closing or self._thread is None or self._thread.is_alive():
            return
        try:
            self._launch()
        except OSError as e:
            if not self._down_logged:
                log.error("the web server stopped and cannot listen again yet: %s", e)
                self._down_logged = True
            return
        self._down_logged = False
        log.warning("the web server had stopped; serving %s again", self.url)

    def _load_index(self) -> None:
        try:
            index = self.app.state.web.search_index(self.monitor.store_sink.store.path, self.monitor.embedding_model)
            index.prepare()  # the vector index, where there are enough rows for one, before the first search needs it
        except ValueError as e:  # the first search says it again, to the page
            log.warning("search: %s", e)

    def _serve(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        except Exception:
            log.exception("the web server stopped")
        finally:
            sock.close()

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        self.watch.close()
        self.hub.close()  # open live streams end, so that the server can stop gracefully
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self.app.state.web.close()

    # -- what the monitor tells it (any thread; never waits) --------------------------------------------
    def window(self, source: str, result: WindowResult) -> None:
        if self.hub.listening:
            now = utc_iso(datetime.now(timezone.utc))
            self.hub.publish({"type": "window", **window_json(source, result), "utc": now})

    def event(self, record: DetectionEvent) -> None:
        if self.hub.listening:
            self.hub.publish({"type": "event", **live_event_json(record)})
