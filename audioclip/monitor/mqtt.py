"""MQTT: retained ON/OFF states, a JSON message per event start and end, Home Assistant discovery.

Topics, with ``<source>`` and ``<label>`` written by :func:`topic_slug` (lower case, every run of
characters other than ``a-z0-9`` becomes ``_``: label "Dog bark" is ``dog_bark``):

- ``<prefix>/<source>/<label>``: ``ON`` when an event starts, ``OFF`` when it ends (retained);
- ``<prefix>/<source>/events``: ``DetectionEvent.to_json()`` per start and end (not retained);
- ``<prefix>/status``: ``online`` on connect, ``offline`` at close and as the last will (retained;
  the sink subscribes to it and answers a stale ``offline`` while it is connected with ``online``);
- ``<prefix>/<source>/availability``: ``online`` while the source delivers audio, else ``offline``
  (retained; :meth:`MqttSink.source_available`, and ``offline`` for every source at close);
- with ``homeassistant=True``, ``homeassistant/binary_sensor/<prefix>/<source>_<label>/config``
  (retained) for each source and event label given to :meth:`MqttSink.announce`, available while
  both the process's status and the source's availability are ``online``.

:meth:`MqttSink.announce` again with fewer labels (a reload) clears what the labels it no longer
names left: their discovery configs and their retained states (an empty retained payload, after
their last ``OFF`` went out), so neither comes back after a broker restart.

Every message is QoS 1. An event's messages are handed to paho once and the sink waits for the
broker's acknowledgements before it takes the next event; while the broker is away paho keeps them
and sends them after it reconnects, and later events wait in the sink's bounded queue. On every
(re)connection the status, the discovery configs and the last state of each topic are published
again, so a broker restarted without persistence gets them back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from .config_parse import redact
from .events import DetectionEvent
from .sink import QueueSink

log = logging.getLogger(__name__)


def topic_slug(name: str) -> str:
    """``name`` as one MQTT topic level: lower case ``a-z0-9`` runs joined by ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise ValueError(f"{name!r} has no letters or digits to name an MQTT topic; rename it")
    return slug


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerUrl:
    """The parts of ``mqtt://[user[:password]@]host[:port]`` (port 1883) or ``mqtts://`` (TLS, port 8883).

    ``url`` is ``[mqtt] url`` as the configuration validated it (scheme, host, port, no path).
    """
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "mqtts"
    return BrokerUrl(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls,
                     username=unquote(parts.username) if parts.username is not None else None,
                     password=unquote(parts.password) if parts.password is not None else None)


class MqttSink(QueueSink):
    """Publish :class:`DetectionEvent` items to an MQTT broker (paho-mqtt 2).

    ``url`` and ``prefix`` are ``[mqtt]``'s, as :class:`~audioclip.monitor.config.MonitorConfig` validated them;
    ``clip_base``: the web server's URL, for each event's ``clip_url`` (None: no link).
    """

    def __init__(self, url: str, *, prefix: str = "audioclip", homeassistant: bool = False,
                 client_id: str | None = None, queue_size: int = 1000,
                 backoff: tuple[float, float] = (1.0, 60.0),
                 reconnect_delay: tuple[float, float] = (1, 60), keepalive: int = 30,
                 clip_base: str | None = None) -> None:
        self.broker = parse_broker_url(url)
        self.clip_base = clip_base
        super().__init__(redact(url), queue_size=queue_size, backoff=backoff)
        self.prefix = prefix
        self.homeassistant = homeassistant
        self.status_topic = f"{self.prefix}/status"
        self.keepalive = keepalive
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"audioclip-{socket.gethostname()}-{os.getpid()}")
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set()
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(*reconnect_delay)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._link = "starting"           # logged once per change
        self._retained_lock = threading.Lock()
        self._states: dict[str, str] = {}       # state topic -> last ON/OFF
        self._discovery: dict[str, str] = {}    # config topic -> payload
        self._availability: dict[str, str] = {} # availability topic -> online/offline
        self._announced: set[str] = set()       # the state topics of the sources and labels announced last
        self._to_clear: set[str] = set()        # state topics no longer announced, cleared after their last OFF
        self._acks = threading.Condition()
        self._acked: set[int] = set()     # acknowledged mids nobody has claimed yet
        self._unclaimed: set[int] = set() # mids of messages whose ack nobody waits for
        self._inflight: tuple[object, list[int]] | None = None
        self._inflight_topic: str | None = None  # its state, which paho sends on connect by itself

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def start(self) -> MqttSink:
        """Connect in the background (never blocks, keeps trying) and start delivering."""
        self._client.connect_async(self.broker.host, self.broker.port, self.keepalive)
        self._client.loop_start()
        super().start()
        return self

    def _state_topic(self, source: str, label: str) -> str:
        return f"{self.prefix}/{topic_slug(source)}/{topic_slug(label)}"

    def _availability_topic(self, source: str) -> str:
        return f"{self.prefix}/{topic_slug(source)}/availability"

    def announce(self, sources: list[str], labels: list[str]) -> None:
        """The sources and the labels that raise events (retained Home Assistant discovery with
        ``homeassistant``); what an earlier call named and this one does not is cleared (see the module)."""
        node = topic_slug(self.prefix)
        configs, states = {}, {self._state_topic(s, label) for s in sources for label in labels}
        for source in sources if self.homeassistant else ():
            for label in labels:
                src, lab = topic_slug(source), topic_slug(label)
                configs[f"homeassistant/binary_sensor/{node}/{src}_{lab}/config"] = json.dumps({
                    "name": label,
                    "unique_id": f"{node}_{src}_{lab}",
                    "state_topic": self._state_topic(source, label),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "availability": [{"topic": self.status_topic}, {"topic": self._availability_topic(source)}],
                    "availability_mode": "all",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                    "device_class": "sound",
                    "device": {"identifiers": [f"{node}_{src}"], "name": f"audioclip {source}",
                               "manufacturer": "audioclip-stream", "model": "AudioCLIP"},
                })
        ending = {self._state_topic(e.source, e.label) for e in self.queued() if isinstance(e, DetectionEvent)}
        with self._retained_lock:
            removed, self._announced = self._announced - states, states
            self._to_clear = (self._to_clear - states) | (removed & ending)
            for topic in removed - ending:
                self._clear(topic)
            stale = [topic for topic in self._discovery if topic not in configs]
            self._discovery = configs
            for topic in stale:
                self._publish_unclaimed(topic, "")
            for topic, payload in configs.items():
                self._publish_unclaimed(topic, payload)

    def source_available(self, source: str, up: bool) -> None:
        """``online`` or ``offline`` on the source's retained availability topic, when it changes."""
        topic, payload = self._availability_topic(source), "online" if up else "offline"
        with self._retained_lock:
            if self._availability.get(topic) != payload:
                self._availability[topic] = payload
                self._publish_unclaimed(topic, payload)

    def _clear(self, state_topic: str) -> None:
        """An empty retained payload: the broker forgets the topic's state (caller holds the retained lock)."""
        self._states.pop(state_topic, None)
        self._publish_unclaimed(state_topic, "")

    # -- delivery (the sink's thread) ----------------------------------------------------------
    def deliver(self, event: DetectionEvent) -> None:
        if self._inflight is not None and self._inflight[0] is event:
            mids = self._inflight[1]      # handed to paho already: wait, never publish twice
        else:
            state_topic = self._state_topic(event.source, event.label)
            state = "ON" if event.kind == "start" else "OFF"
            with self._retained_lock:
                self._states[state_topic] = state
                self._inflight_topic = state_topic
                mids = [self._client.publish(f"{self.prefix}/{topic_slug(event.source)}/events",
                                             json.dumps(event.to_json(self.clip_base)), qos=1).mid,
                        self._client.publish(state_topic, state, qos=1, retain=True).mid]
            self._inflight = (event, mids)
        self._await_acks(mids)
        with self._retained_lock:
            self._inflight, self._inflight_topic = None, None
            state_topic = self._state_topic(event.source, event.label)
            if event.kind == "end" and state_topic in self._to_clear:  # its label was removed: now forget it
                self._to_clear.discard(state_topic)
                self._clear(state_topic)

    def _await_acks(self, mids: list[int]) -> None:
        with self._acks:
            while True:
                if all(mid in self._acked for mid in mids):
                    self._acked.difference_update(mids)
                    return
                if self.closing_past_deadline():
                    raise TimeoutError("the broker did not acknowledge before close")
                self._acks.wait(0.2)

    def _publish_unclaimed(self, topic: str, payload: str) -> None:
        mid = self._client.publish(topic, payload, qos=1, retain=True).mid
        with self._acks:
            if mid in self._acked:
                self._acked.discard(mid)
            else:
                self._unclaimed.add(mid)

    # -- paho's callbacks (its network thread) --------------------------------------------------
    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acks:
            if mid in self._unclaimed:
                self._unclaimed.discard(mid)
            else:
                self._acked.add(mid)
                self._acks.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._change_link(f"refused ({reason_code})", logging.WARNING,
                              "the broker refused the connection (%s); retrying with backoff", reason_code)
            return
        with self._retained_lock:
            self._publish_unclaimed(self.status_topic, "online")
            for topic, payload in [*self._discovery.items(), *self._availability.items()]:
                self._publish_unclaimed(topic, payload)
            for topic, state in self._states.items():
                if topic != self._inflight_topic:
                    self._publish_unclaimed(topic, state)
        client.subscribe(self.status_topic, qos=1)
        self._change_link("up", logging.INFO, "connected")
        self.wake()

    def _on_message(self, client, userdata, message) -> None:
        # A will can land after our "online": the broker ends a half-open old connection late.
        if message.topic == self.status_topic and message.payload == b"offline" and not self._closing:
            log.debug("%s: %s said offline while connected; publishing online again", self.name, self.status_topic)
            self._publish_unclaimed(self.status_topic, "online")

    def _on_connect_fail(self, client, userdata) -> None:
        self._change_link("unreachable", logging.WARNING,
                          "broker unreachable; retrying with backoff, events wait in the queue")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._link == "up" and not self._closing:
            self._change_link("lost", logging.WARNING,
                              "connection lost (%s); reconnecting with backoff, events wait in the queue",
                              reason_code)

    def _change_link(self, state: str, level: int, message: str, *args) -> None:
        if state != self._link:
            self._link = state
            log.log(level, "%s: " + message, self.name, *args)

    # -- close ------------------------------------------------------------------------------------
    def shutdown(self, deadline: float) -> None:
        """Publish ``offline`` (waiting for it until the deadline, if connected) and disconnect.

        Without a connection, paho's thread is not joined: between attempts it checks every second
        whether it was disconnected, and ends by itself.
        """
        connected = self.connected
        if connected:
            with self._retained_lock:
                for topic in self._availability:
                    self._publish_unclaimed(topic, "offline")
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            deadline = max(deadline, time.monotonic() + 0.5)
            with self._acks:
                while info.mid not in self._acked and time.monotonic() < deadline and self.connected:
                    self._acks.wait(0.05)
                self._acked.discard(info.mid)
        self._client.disconnect()
        if connected:
            self._client.loop_stop()
