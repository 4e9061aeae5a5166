"""Who may do what: with a token, every request from beyond loopback and every write carries it.

``Authorization: Bearer <token>``, compared in constant time. What a browser loads by itself also takes
``?token=``, as it cannot set headers there: the live stream (``EventSource``), clips (``<audio>``),
spectrograms (``<img>``) and the events' CSV (a download link), for GET and HEAD only (:data:`QUERY_TOKEN_PATHS`).
The pages and their static files need
no token (they hold no data; the page asks for the token and sends it with its API calls), nor does the
OpenAPI description (``/openapi.json``, which the ``/docs`` page shows), the same for every installation.
Without a token the server listens on loopback only (the configuration refuses anything else), and every
local request is allowed.

Behind a reverse proxy on the same machine every request arrives from loopback: reads then need no token,
so protect them at the proxy (or bind the proxy's upstream to another loopback address, e.g. 127.0.0.2).
"""

from __future__ import annotations

import hmac
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

READS = ("GET", "HEAD", "OPTIONS")
PUBLIC_PREFIXES = ("/static/", "/openapi.json")
PAGES = ("/", "/events", "/labels", "/search", "/docs")
QUERY_TOKEN_PATHS = re.compile(r"/api/live|/api/events|/api/events/\d+/(clip|spectrogram\.png)"
                               r"|/api/sources/[^/]+/spectrogram\.png")
"""Paths whose GET may carry the token as ``?token=`` (the server keeps no access log: URLs are never logged)."""
LOOPBACK_CLIENTS = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
"""Clients that count as this machine: its loopback address only. Other addresses of the loopback range
(127.0.0.2, ...) count as beyond it, as a container's or another user's namespace may reach them."""


def needs_token(request: Request) -> bool:
    """Whether this request must show the token (when one is set)."""
    path = request.url.path
    if request.method in READS and (path in PAGES or path.startswith(PUBLIC_PREFIXES)):
        return False
    client = request.client.host if request.client is not None else ""
    return request.method not in READS or client not in LOOPBACK_CLIENTS


def presented(request: Request) -> str | None:
    """The token the request shows: its bearer header, or ``?token=`` on the live stream."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.method in ("GET", "HEAD") and QUERY_TOKEN_PATHS.fullmatch(request.url.path):
        return request.query_params.get("token") or None
    return None


class TokenMiddleware:
    """Refuses, with 401 and a one-line reason, a request that needs the token and lacks the right one
    (plain ASGI, so that the live stream passes through untouched)."""

    def __init__(self, app, token: str):
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            request = Request(scope)
            if needs_token(request):
                token = presented(request)
                if token is None:
                    await _refuse("this request needs the token: send 'Authorization: Bearer <token>'")(
                        scope, receive, send)
                    return
                if not hmac.compare_digest(token.encode(), self._token):
                    await _refuse("wrong token")(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _refuse(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
