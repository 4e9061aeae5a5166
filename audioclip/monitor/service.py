"""The monitor: every configured source through one model, events to the database, clips, MQTT,
webhooks and metrics, until SIGTERM / SIGINT; SIGHUP reloads labels and thresholds.

The inference path never waits on the outside world: each sink is a :class:`QueueSink` with its
own thread, bounded queue and backoff (the database included), and every source is a
:class:`SourcePipeline` on its own thread, reopened by its :class:`ResilientSource` when it fails.
A housekeeping loop on the calling thread restarts dead sink threads, reports the sources' state to
the metrics and applies the clips' retention (a :class:`ClipSink` writes the clips on its own thread).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..stream.backends import shortest_window
from ..stream.incremental import window_scorer
from .clip_sink import ClipSink
from .clips import ClipRecorder, check_writable
from .config import LabelParams, MonitorConfig, SourceConfig, load_config
from .events import DetectionEvent
from .messages import (
    PIPELINE_MESSAGES,
    STORE_MESSAGES,
    ClipsCleared,
    ClipWritten,
    EventEmbedding,
    EventSeen,
    MomentEmbedding,
    PipelineMessage,
    StoreMessage,
    WindowClassified,
    check_message,
)
from .pipeline import IdCounter, SourcePipeline
from .scheduler import InferenceScheduler
from .sink import QueueSink
from .store import EventStore
from .supervisor import ResilientSource, device_opener, file_opener, url_opener

log = logging.getLogger(__name__)

RETENTION_SECONDS = 600.0
"""How often the clips' retention (``keep_days``, ``max_gb``) is applied while running."""

SHUTDOWN_SECONDS = 5.0
"""The most a stop waits for the sinks to deliver what they hold."""


class StoreSink(QueueSink):
    """The detections database as a sink of :data:`~audioclip.monitor.messages.StoreMessage`: events, open
    events' last-seen times, events' and moments' embeddings (recorded as ``embedding_model``'s), clip paths.
    :meth:`put` refuses anything else with ``TypeError``, in the caller's thread."""

    def __init__(self, store: EventStore, *, embedding_model: str, queue_size: int = 10_000):
        super().__init__(f"database {store.path}", queue_size=queue_size, backoff=(0.5, 30.0))
        self.store, self.embedding_model = store, embedding_model

    def put(self, item: StoreMessage) -> None:
        check_message(item, STORE_MESSAGES, "the database sink")
        super().put(item)

    def deliver(self, item: StoreMessage) -> None:
        if isinstance(item, DetectionEvent):
            self.store.record(item)
        elif isinstance(item, EventSeen):
            self.store.touch(item.event_id, item.utc, item.s, item.peak, item.mean)
        elif isinstance(item, EventEmbedding):
            self.store.set_embedding(item.event_id, self.embedding_model, item.window, item.vector)
        elif isinstance(item, MomentEmbedding):
            self.store.add_moment(item.source, item.utc, item.t_start, item.t_end, self.embedding_model, item.vector)
        elif isinstance(item, ClipWritten):
            self.store.set_clip(item.event_id, item.path, item.note, item.start_s, item.end_s)
        else:  # ClipsCleared: put() let nothing else in
            self.store.clear_clips(item.event_ids)

    def shutdown(self, deadline: float) -> None:
        self.store.close()


def open_source(source: SourceConfig, *, stdin=None):
    """The reader of one configured source: live ones reopen for ever, a file read once or stdin ends."""
    if source.kind == "url":
        opener = url_opener(source.url, name=source.name, read_timeout=min(10.0, source.stall_seconds))
    elif source.kind == "device":
        opener = device_opener(source.device)
    elif source.kind == "file" and source.loop:  # looped, a file is a live source: always paced
        opener = file_opener(source.file, loop=True, realtime=True)
    elif source.kind == "file":
        from ..stream.sources import FileSource

        return FileSource(source.file, realtime=source.realtime)
    else:
        from ..stream.sources import StdinSource

        return StdinSource(stdin if stdin is not None else sys.stdin.buffer)
    return ResilientSource(opener, name=source.name, stall_seconds=source.stall_seconds)


def event_labels(config: MonitorConfig, labels: list[str]) -> list[str]:
    """The labels that raise events (``event = false`` ones are only scored): all of a model's own labels."""
    if not config.labels:
        return list(labels)
    return [label.name for label in config.labels if label.event]


def label_params(config: MonitorConfig, source: SourceConfig, n_labels: int) -> LabelParams:
    """The configuration's per-label settings, or the defaults for a model's own labels."""
    if config.labels:
        return config.label_params(source)
    base = config.stream_config(source)
    return LabelParams(thresholds=np.full(n_labels, base.threshold), hysteresis=np.full(n_labels, base.hysteresis),
                       min_windows=np.full(n_labels, base.min_windows, np.int64), event=np.ones(n_labels, bool),
                       privacy=np.zeros(n_labels, bool))


class Monitor:
    """Runs a :class:`MonitorConfig`. ``output``: a JsonlOutput, CsvOutput or LiveOutput (or None).
    ``classifier``: built from the configuration when not given. ``config_path``: what SIGHUP reloads.
    ``stream_extra``: further StreamConfig fields from the command line (``duration``)."""

    def __init__(self, config: MonitorConfig, *, output=None, classifier=None, config_path: str | None = None,
                 stream_extra: dict | None = None, stdin=None):
        self.config, self.output, self.config_path = config, output, config_path
        self.stream_extra = stream_extra or {}
        self._classifier, self._stdin = classifier, stdin
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.interrupted = False
        self.store_sink: StoreSink | None = None
        self.clips: ClipSink | None = None
        self.sinks: list[QueueSink] = []
        self.metrics = None
        self.pipelines: list[SourcePipeline] = []
        self.output_factory = None  # labels -> output, for outputs that need the labels (CSV columns)
        self.labels: list[str] = []  # the classifier's, once it is loaded
        self.next_id: IdCounter | None = None
        self.embedding_model: str | None = None
        self.scheduler: InferenceScheduler | None = None
        self.stop_signal: int | None = None  # SIGTERM or SIGINT when one stopped it (install_signals)
        self.web = None  # the web page and HTTP API (audioclip.monitor.web.server.WebServer), with [http]
        self._reload_lock = threading.Lock()  # SIGHUP and the web page's label changes, one at a time

    # -- control, from any thread or a signal handler -------------------------------------------
    def stop(self) -> None:
        self.interrupted = True
        self._stop.set()

    def reload(self) -> None:
        self._reload.set()

    @property
    def classifier(self):
        """The classifier the sources are scored with now (a reload replaces it)."""
        return self._classifier

    @property
    def clip_base_url(self) -> str | None:
        """Where the web server serves clips (``[http] public_url`` or ``http://listen``), when it does."""
        http, store = self.config.http, self.config.store
        return None if http is None or store is None or store.clips is None else http.base_url

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run until stopped, or until every source has ended (files read once, stdin)."""
        try:
            self._open_outputs()
            self._start_sources()
            self._loop()
        finally:
            self._shutdown()

    def _open_outputs(self) -> None:
        config = self.config
        for source in config.enabled_sources:  # a file that cannot be read is refused before anything is made
            if source.kind == "file":
                from ..stream.sources import FileSource

                FileSource(source.file).close()
        if config.store is not None and config.store.clips is not None:
            check_writable(config.store.clips)  # refused at start, before the model loads
        if self._classifier is None:
            from .labels import config_classifier

            self._classifier = config_classifier(config)
        self.labels = list(self._classifier.labels)
        if self.output is None and self.output_factory is not None:
            self.output = self.output_factory(self.labels)
        model = config.model
        self.embedding_model = f"onnx:{model.onnx}" if model.onnx is not None else str(model.checkpoint)
        first_id, crashed = 1, []
        if config.store is not None:
            store = EventStore(config.store.db)
            crashed = store.ended(store.close_open())  # what a crash left open, closed where last seen
            first_id = store.next_id()
            self.store_sink = StoreSink(store, embedding_model=self.embedding_model).start()
            if config.store.clips is not None:
                longest = max(config.stream_config(s).window for s in config.enabled_sources)
                recorder = ClipRecorder(config.store.clips, pre_roll=config.store.pre_roll,
                                        post_roll=config.store.post_roll, max_seconds=config.store.max_clip_seconds,
                                        hold=longest)  # privacy mutes of every window over a clip land first
                self.clips = ClipSink(recorder, self._clips_done).start()
            self._retention()
        self.next_id = IdCounter(first_id)
        if config.mqtt is not None:
            from .mqtt import MqttSink

            mqtt = MqttSink(config.mqtt.url, prefix=config.mqtt.prefix, homeassistant=config.mqtt.homeassistant,
                            queue_size=config.mqtt.queue, clip_base=self.clip_base_url).start()
            mqtt.announce([s.name for s in config.enabled_sources], event_labels(config, self.labels))
            self.sinks.append(mqtt)
        for hook in config.webhooks:
            from .webhooks import WebhookSink

            self.sinks.append(WebhookSink(hook.url, secret=hook.secret, timeout=hook.timeout,
                                          clip_base=self.clip_base_url).start())
        for record in crashed:  # their ends, as any other end (the database has them already)
            self._publish_event(record)
        if config.metrics is not None:
            from .metrics import Metrics

            self.metrics = Metrics(config.metrics.listen).start()
            for sink in [self.store_sink, self.clips, *self.sinks]:
                if sink is not None:
                    self.metrics.watch_sink(sink)
        if config.http is not None:
            from .web.server import WebServer

            self.web = WebServer(self, config.http).start()

    def _start_sources(self) -> None:
        store = self.config.store
        self.scheduler = InferenceScheduler(self._classifier,
                                            embeddings=store is not None and store.embeddings).start()
        for source in self.config.enabled_sources:
            stream = self.config.stream_config(source, **self.stream_extra)
            pipeline = SourcePipeline(
                source.name, open_source(source, stdin=self._stdin), config=stream, labels=self.labels,
                params=label_params(self.config, source, len(self.labels)), scheduler=self.scheduler,
                emit=self._emit, next_id=self.next_id, clips=self.clips, metrics=self.metrics,
                shortest=shortest_window(self._classifier), embed_every=0.0 if store is None else store.embed_every)
            scorer = window_scorer(self._classifier, stream, config_file=self.config_path, announce=not self.pipelines)
            self.scheduler.add_source(source.name, pipeline.on_result, score=scorer)
            if self.metrics is not None:
                self.metrics.add_source(source.name)
            self.pipelines.append(pipeline)
        for pipeline in self.pipelines:
            pipeline.start()
        log.info("monitoring %d source(s) with %d labels", len(self.pipelines), len(self.labels))

    def _loop(self) -> None:
        seen = {p.name: (0, 0, None) for p in self.pipelines}  # reconnects, overflows, up
        next_retention = time.monotonic() + RETENTION_SECONDS
        while not self._stop.wait(0.5):
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload()
            for sink in [self.store_sink, self.clips, *self.sinks]:
                if sink is not None:
                    sink.ensure_running()
            if self.web is not None:
                self.web.ensure_running()
            for p in self.pipelines:
                reconnects, overflows = getattr(p.source, "reconnects", 0), p.source.overflows
                up = getattr(p.source, "up", not p.finished.is_set())
                last_reconnects, last_overflows, last_up = seen[p.name]
                if self.metrics is not None:
                    for _ in range(reconnects - last_reconnects):
                        self.metrics.reconnected(p.name)
                    if overflows > last_overflows:
                        self.metrics.input_overflows(p.name, overflows - last_overflows)
                    if up != last_up:
                        self.metrics.source_up(p.name, up)
                if up != last_up:
                    for sink in self.sinks:
                        sink.source_available(p.name, up)
                seen[p.name] = (reconnects, overflows, up)
            if self.store_sink is not None:
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_SECONDS
                    self._retention()
            if self.output is not None:
                self.output.refresh(self.pipelines)
            if all(p.finished.is_set() for p in self.pipelines):
                break

    def _shutdown(self) -> None:
        if self.web is not None:
            self.web.close()
        for p in self.pipelines:
            close = getattr(p.source, "close", None)
            if close is not None and not p.finished.is_set():
                close()
        for p in self.pipelines:
            p.join(2.0)
        if self.pipelines:
            self.scheduler.close(drain=not self.interrupted, timeout=None if not self.interrupted else 10.0)
        for p in self.pipelines:
            p.close_events()
        if self.clips is not None:
            self.clips.flush()
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for sink in [self.clips, *self.sinks, self.store_sink]:  # the clips before the database: their paths go there
            if sink is not None:
                sink.close(max(0.1, deadline - time.monotonic()))
        if self.metrics is not None:
            self.metrics.close()
        if self.output is not None:
            self.output.refresh(self.pipelines)
            self.output.close()

    # -- what the pipelines hand over --------------------------------------------------------------
    def _emit(self, message: PipelineMessage) -> None:
        """A pipeline's news to the output and the sinks; anything but a PipelineMessage is a bug (TypeError)."""
        check_message(message, PIPELINE_MESSAGES, "the monitor")
        if isinstance(message, WindowClassified):
            if self.output is not None:
                self.output.window(message.source, message.result)
            if self.web is not None:
                self.web.window(message.source, message.result)
            return
        if self.store_sink is not None:
            self.store_sink.put(message)
        if isinstance(message, DetectionEvent):
            self._publish_event(message)

    def _publish_event(self, record: DetectionEvent) -> None:
        """An event's start or end to MQTT, the webhooks and the output (nothing else is ever published)."""
        check_message(record, (DetectionEvent,), "MQTT and the webhooks")
        for sink in self.sinks:
            sink.put(record)
        if self.output is not None:
            self.output.event(record)
        if self.web is not None:
            self.web.event(record)

    def _clips_done(self, results) -> None:
        for result in results:
            if self.store_sink is not None:
                span = self.clips.recorder.take_span(result.event_id) or (None, None)  # this is the clips' thread
                self.store_sink.put(ClipWritten(result.event_id, result.path, result.note, *span))
            if result.cause is not None and self.metrics is not None:
                self.metrics.clip_not_written(result.cause)

    def _retention(self) -> None:
        """Delete the moments older than ``keep_days`` (clips or not), then the clips ``keep_days`` and ``max_gb``
        let go. ``max_gb`` counts the clips only: a moment is about 2 kB (docs/monitor.md)."""
        store = self.config.store
        if self.store_sink is None:
            return
        if store.keep_days is not None:
            try:
                n = self.store_sink.store.delete_moments(datetime.now(timezone.utc) - timedelta(days=store.keep_days))
            except sqlite3.Error as e:  # the database busy or failing: the next round tries again
                log.warning("moment retention failed, tried again in %.0f s: %s", RETENTION_SECONDS, e)
            else:
                if n:
                    log.info("moment retention deleted %d moment(s) older than %g days", n, store.keep_days)
        if self.clips is None or (store.keep_days is None and store.max_gb is None):
            return
        ids = self.clips.recorder.enforce_retention(self.store_sink.store.clips_by_age(), store.keep_days,
                                                    store.max_gb)
        if ids:
            self.store_sink.put(ClipsCleared(tuple(ids)))
            log.info("clip retention deleted %d clip(s)", len(ids))

    # -- SIGHUP --------------------------------------------------------------------------------------
    def _apply_reload(self) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: nothing to reload (no --config file)")
            return
        try:
            self.reload_config()
        except Exception as e:  # a bad file: the running configuration stays
            log.error("reload refused, the running configuration stays: %s", e)

    def reload_config(self, config: MonitorConfig | None = None) -> None:
        """Apply the configuration file again (SIGHUP), or ``config`` read from it (the web page's label
        changes): labels and thresholds now, sources at the next start. Any thread, one reload at a time.
        Raises when the file or its labels are refused; the running configuration then stays."""
        with self._reload_lock:
            config = load_config(self.config_path) if config is None else config
            if [s for s in config.enabled_sources] != [s for s in self.config.enabled_sources]:
                log.warning("%s: sources changed; they apply at the next start (labels and thresholds apply now)",
                            self.config_path)
            config = dataclasses.replace(config, http=self.config.http)  # the web server stays as it started
            self._apply(config, self._relabel(config))

    def _apply(self, config: MonitorConfig, classifier) -> None:
        self.scheduler.set_classifier(classifier)
        self._classifier, self.labels = classifier, list(classifier.labels)
        for p in self.pipelines:
            source = next((s for s in config.enabled_sources if s.name == p.name), None)
            params = label_params(config, source or self.config.source(p.name), len(self.labels))
            p.set_labels(self.labels, params, keep=self._unchanged_labels(config, p.name, params))
        for sink in self.sinks:
            sink.announce([p.name for p in self.pipelines], event_labels(config, self.labels))
        self.config = config
        log.info("reloaded %s: %d labels", self.config_path, len(self.labels))

    def _unchanged_labels(self, config: MonitorConfig, source: str, params: LabelParams) -> set[str]:
        """The labels of ``config`` whose prompts, template, thresholds, hysteresis, ``min_windows`` and ``event``
        are as they were for ``source``: their open events go on through a reload."""
        old = self.config
        if not config.labels or not old.labels or config.defaults.template != old.defaults.template:
            return set()
        before = {label.name: (label, i) for i, label in enumerate(old.labels)}
        was = label_params(old, old.source(source), len(old.labels))
        unchanged = set()
        for i, label in enumerate(config.labels):
            if label.name not in before:
                continue
            previous, j = before[label.name]
            if previous.prompts == label.prompts and all(
                    getattr(was, field)[j] == getattr(params, field)[i]
                    for field in ("thresholds", "hysteresis", "min_windows", "event")):
                unchanged.add(label.name)
        return unchanged

    def _relabel(self, config: MonitorConfig):
        """A classifier over ``config``'s labels that reuses the loaded model."""
        from ..stream.labels import onnx_group_classifier, torch_group_classifier
        from ..stream.scoring import score_classifier

        groups = [(label.name, label.prompts) for label in config.labels]
        if not groups:
            return score_classifier(self._classifier, config.defaults.score)
        if config.model.onnx is not None:
            classifier = onnx_group_classifier(config.model.onnx, groups, config.defaults.template,
                                               threads=config.model.threads or 2, runtime=config.model.runtime,
                                               precision=config.model.precision)
        else:
            classifier = torch_group_classifier(self._classifier.model, groups, config.defaults.template,
                                                precision=config.model.precision)
        return score_classifier(classifier, config.defaults.score)


def install_signals(monitor: Monitor) -> None:
    """SIGTERM / SIGINT stop the monitor, recorded in ``monitor.stop_signal`` (the CLI then exits 0
    after SIGTERM, 130 after Ctrl-C); SIGHUP reloads it."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame) -> None:
        monitor.stop_signal = signum
        monitor.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: monitor.reload())


def run_monitor(config: MonitorConfig | str | Path, *, output=None, stream_extra: dict | None = None) -> Monitor:
    """Load (when given a path) and run a configuration in this thread; return the stopped monitor."""
    path = None
    if not isinstance(config, MonitorConfig):
        path, config = str(config), load_config(config)
    monitor = Monitor(config, output=output, config_path=path, stream_extra=stream_extra)
    install_signals(monitor)
    monitor.run()
    return monitor
