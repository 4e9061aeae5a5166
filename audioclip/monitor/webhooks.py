"""Webhooks: an HTTP POST of each event's JSON, signed with HMAC-SHA256 when a secret is set.

The body is ``json.dumps(DetectionEvent.to_json())`` in UTF-8 with ``Content-Type:
application/json``; with a secret, ``X-Audioclip-Signature: sha256=<hex>`` is the HMAC-SHA256 of
those exact bytes (as GitHub's ``X-Hub-Signature-256``). Any answer other than 2xx (redirects
included) and any connection error keeps the event and retries it with backoff. Credentials in
the URL (``https://user:pass@host/``) are sent as HTTP basic authentication; logs name the hook
by scheme, host and path only, never its credentials, query string or secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from .events import DetectionEvent
from .sink import QueueSink

SIGNATURE_HEADER = "X-Audioclip-Signature"


def signature(secret: str, body: bytes) -> str:
    """The header value a receiver compares (with ``hmac.compare_digest``) to authenticate ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer other than 2xx: the event is retried, not re-sent as GET


class WebhookSink(QueueSink):
    """POST :class:`DetectionEvent` items to ``url``, a ``[[webhooks]]`` entry's as the configuration validated it
    (http or https, a host, a numeric port)."""

    def __init__(self, url: str, *, secret: str | None = None, timeout: float = 5.0,
                 queue_size: int = 1000, backoff: tuple[float, float] = (1.0, 60.0),
                 clip_base: str | None = None) -> None:
        parts = urlsplit(url)
        self.clip_base = clip_base  # the web server's URL, for each event's clip_url (None: no link)
        netloc = parts.netloc.rpartition("@")[2]
        super().__init__(f"webhook {parts.scheme}://{netloc}{parts.path}", queue_size=queue_size, backoff=backoff)
        self._url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._secret = secret or None
        self._authorization = None
        if parts.username is not None:
            userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._authorization = "Basic " + base64.b64encode(userpass.encode()).decode()
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        return f"WebhookSink({self.name!r})"

    def deliver(self, event: DetectionEvent) -> None:
        body = json.dumps(event.to_json(self.clip_base)).encode()
        request = urllib.request.Request(self._url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "audioclip-stream")
        if self._secret is not None:
            request.add_header(SIGNATURE_HEADER, signature(self._secret, body))
        if self._authorization is not None:
            request.add_header("Authorization", self._authorization)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as e:
            e.close()
            raise ConnectionError(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise ConnectionError(f"no answer: {reason}") from None
        if not 200 <= status < 300:
            raise ConnectionError(f"HTTP {status}")
