"""Prometheus metrics of the monitor, served over HTTP on ``[metrics] listen``.

The service reports what happens by calling the methods of :class:`Metrics`; sinks are read at
scrape time (:meth:`Metrics.watch_sink`), so their counters need no calls. Series:

- ``audioclip_windows_total{source}``: windows formed, gated ones included;
- ``audioclip_gated_windows_total{source}``: windows quieter than ``min_dbfs``, not classified;
- ``audioclip_dropped_windows_total{source}``: windows replaced by a newer one before inference;
- ``audioclip_input_overflows_total{source}``, ``audioclip_reconnects_total{source}``;
- ``audioclip_source_up{source}``: 1 while the source delivers audio, else 0;
- ``audioclip_input_level_dbfs{source}``: the level of the source's last window;
- ``audioclip_events_total{source,label}``: events started;
- ``audioclip_inference_seconds``: histogram of the time to classify one window;
- ``audioclip_sink_dropped_total{sink}``: items a sink dropped (queue full or left at close);
- ``audioclip_mqtt_connected``: 1 while the MQTT sink is connected to its broker, else 0 (with ``[mqtt]``);
- ``audioclip_clips_not_written_total{cause}``: event clips that were not written (``no_audio``: none of
  the event's audio was in the history; ``write_failed``: the file could not be written, e.g. a full disk;
  ``late_mute_failed``: deleted because a late privacy mute could not be applied).
"""

from __future__ import annotations

import logging
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from .config_parse import split_listen

log = logging.getLogger(__name__)

INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
CLIP_CAUSES = ("no_audio", "write_failed", "late_mute_failed")
"""Why a clip was not written: the ``cause`` of :class:`~audioclip.monitor.clips.ClipResult`."""


METRICS_PATH = "/metrics"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # a scrape every few seconds is not news
        pass


def _metrics_only(app):
    """``app`` at :data:`METRICS_PATH`; any other path is a 404 that says where the metrics are."""
    def serve(environ, start_response):
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {METRICS_PATH}\n".encode()]
        return app(environ, start_response)
    return serve


class _SinkCollector:
    def __init__(self) -> None:
        self.sinks: dict[str, object] = {}

    def collect(self):
        family = CounterMetricFamily("audioclip_sink_dropped",
                                     "Items a sink dropped: queue full or left at close", labels=["sink"])
        for name, sink in list(self.sinks.items()):
            family.add_metric([name], sink.dropped)
        yield family
        brokers = [sink for sink in list(self.sinks.values()) if hasattr(sink, "connected")]
        if brokers:
            yield GaugeMetricFamily("audioclip_mqtt_connected", "1 while the MQTT sink is connected to its broker",
                                    value=1 if all(sink.connected for sink in brokers) else 0)


class Metrics:
    """The monitor's metrics in a registry of their own, served by :meth:`start` until :meth:`close`."""

    def __init__(self, listen: str = "127.0.0.1:9108") -> None:
        self.host, self.port = split_listen(listen)  # [metrics] listen, as the configuration validated it
        self.registry = CollectorRegistry()
        r = self.registry
        self._windows = Counter("audioclip_windows", "Windows formed (gated ones included)", ["source"], registry=r)
        self._gated = Counter("audioclip_gated_windows", "Windows below min_dbfs, not classified", ["source"],
                              registry=r)
        self._dropped = Counter("audioclip_dropped_windows", "Windows replaced by a newer one before inference",
                               ["source"], registry=r)
        self._overflows = Counter("audioclip_input_overflows", "Input buffer overflows", ["source"], registry=r)
        self._reconnects = Counter("audioclip_reconnects", "Times the source was reopened", ["source"], registry=r)
        self._up = Gauge("audioclip_source_up", "1 while the source delivers audio", ["source"], registry=r)
        self._level = Gauge("audioclip_input_level_dbfs", "Level of the last window", ["source"], registry=r)
        self._events = Counter("audioclip_events", "Events started", ["source", "label"], registry=r)
        self._clips_lost = Counter("audioclip_clips_not_written", "Event clips not written, by cause", ["cause"],
                                   registry=r)
        for cause in CLIP_CAUSES:
            self._clips_lost.labels(cause)
        self._inference = Histogram("audioclip_inference_seconds", "Time to classify one window",
                                   buckets=INFERENCE_BUCKETS, registry=r)
        self._sinks = _SinkCollector()
        r.register(self._sinks)
        self._server = None
        self._thread = None

    # -- what the service reports ------------------------------------------------------------
    def add_source(self, source: str) -> None:
        """Create the source's series at zero (down) so that they exist before anything happens."""
        for counter in (self._windows, self._gated, self._dropped, self._overflows, self._reconnects):
            counter.labels(source)
        self._up.labels(source).set(0)

    def window(self, source: str, *, level_dbfs: float, inference_s: float | None) -> None:
        """A window was formed; ``inference_s`` is None when it was gated (not classified)."""
        self._windows.labels(source).inc()
        self._level.labels(source).set(level_dbfs)
        if inference_s is None:
            self._gated.labels(source).inc()
        else:
            self._inference.observe(inference_s)

    def dropped_windows(self, source: str, n: int = 1) -> None:
        self._dropped.labels(source).inc(n)

    def input_overflows(self, source: str, n: int = 1) -> None:
        self._overflows.labels(source).inc(n)

    def reconnected(self, source: str) -> None:
        self._reconnects.labels(source).inc()

    def source_up(self, source: str, up: bool) -> None:
        self._up.labels(source).set(1 if up else 0)

    def event(self, source: str, label: str) -> None:
        """An event started."""
        self._events.labels(source, label).inc()

    def clip_not_written(self, cause: str) -> None:
        """An event's clip was not written (``cause``: one of :data:`CLIP_CAUSES`)."""
        self._clips_lost.labels(cause).inc()

    def watch_sink(self, sink) -> None:
        """Export ``sink.dropped`` (read at each scrape) as ``audioclip_sink_dropped_total{sink=sink.name}``."""
        self._sinks.sinks[sink.name] = sink

    # -- the HTTP server ----------------------------------------------------------------------
    def start(self) -> Metrics:
        """Serve ``/metrics`` (other paths: 404); port 0 takes a free port (then read :attr:`port`)."""
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
            self._server = make_server(self.host, self.port, _metrics_only(make_wsgi_app(self.registry)),
                                       server_class, handler_class=_QuietHandler)
        except OSError as e:
            raise OSError(f"metrics.listen: cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)
            self._server = self._thread = None
