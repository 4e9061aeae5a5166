"""The monitor's push sinks against real components: the queue base, mosquitto, an HTTP receiver, a scrape."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audioclip.monitor.backoff import backoff_delay
from audioclip.monitor.events import DetectionEvent
from audioclip.monitor.metrics import Metrics
from audioclip.monitor.mqtt import BrokerUrl, MqttSink, parse_broker_url, topic_slug
from audioclip.monitor.sink import QueueSink, Undeliverable
from audioclip.monitor.supervisor import ResilientSource
from audioclip.monitor.webhooks import WebhookSink

from helpers import wait_until
from servers import Mosquitto, Receiver, Subscriber, free_port

FAST = (0.02, 0.1)  # backoff for the tests: the production default is (1, 60)


def event(id: int, kind: str = "start", source: str = "porch", label: str = "Dog bark") -> DetectionEvent:
    t = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
    return DetectionEvent(id=id, kind=kind, source=source, label=label, start_utc=t, start_s=1.5,
                          peak=0.9, mean=0.8, end_utc=t if kind == "end" else None,
                          end_s=3.0 if kind == "end" else None)


# -- the queue base ------------------------------------------------------------------------------

class Recorder(QueueSink):
    """Delivers into a list; ``gate`` holds deliveries back; ``fail`` failures come first."""

    def __init__(self, *, fail: int = 0, die: int = 0, **kw):
        super().__init__("recorder", backoff=FAST, **kw)
        self.items, self.fail, self.die = [], fail, die
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def deliver(self, item):
        self.entered.set()
        self.gate.wait()
        if self.die:
            self.die -= 1
            raise SystemExit("a bug that ends the thread")
        if self.fail:
            self.fail -= 1
            raise OSError("target down")
        self.items.append(item)


def test_queue_never_blocks_and_drops_the_oldest_when_full():
    sink = Recorder(queue_size=3).start()
    sink.gate.clear()
    sink.put(0)
    assert sink.entered.wait(5)
    putter = threading.Thread(target=lambda: [sink.put(i) for i in range(1, 6)], daemon=True)
    putter.start()
    putter.join(30)
    assert not putter.is_alive()  # every put returned while the delivery was still held
    assert sink.dropped == 2 and sink.pending == 4
    sink.gate.set()
    wait_until(lambda: sink.delivered == 4, 5, "4 deliveries")
    assert sink.items == [0, 3, 4, 5]
    sink.close()
    assert sink.dropped == 2


def test_failures_are_retried_in_order_and_logged_once(caplog):
    caplog.set_level(logging.INFO, "audioclip.monitor.sink")
    sink = Recorder(fail=4).start()
    for i in range(3):
        sink.put(i)
    wait_until(lambda: sink.delivered == 3, 5, "3 deliveries")
    assert sink.items == [0, 1, 2] and sink.failures == 4 and sink.dropped == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("delivery failed (target down)" in m for m in messages) == 1
    assert sum("delivering again after 4 failed attempts" in m for m in messages) == 1
    sink.close()


def test_one_backoff_schedule_doubles_with_jitter_and_caps_at_the_longest():
    for attempt, nominal in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        waits = [backoff_delay((0.5, 4.0), attempt) for _ in range(400)]
        assert 0.8 * nominal <= min(waits) and max(waits) <= min(4.0, 1.2 * nominal), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.1 * nominal  # jittered, below the cap too
        assert len(set(waits)) == len(waits)  # at the cap too: none clipped onto the same wait
    assert backoff_delay((1.0, 60.0), 10_000) <= 60.0  # no overflow however long the outage
    for bad in ((0.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="0 < first <= longest"):
            QueueSink("x", backoff=bad)
        with pytest.raises(ValueError, match="0 < first <= longest"):
            ResilientSource(lambda: None, name="x", backoff=bad)


def test_a_sinks_retries_wait_the_shared_schedule():
    attempts = []

    def deliver(item):
        attempts.append(time.monotonic())
        if len(attempts) <= 4:
            raise OSError("target down")

    sink = QueueSink("timed", deliver=deliver, backoff=(0.1, 0.2)).start()
    sink.put("x")
    wait_until(lambda: sink.delivered == 1, 10, "the delivery after four failures")
    sink.close()
    waits = [b - a for a, b in zip(attempts, attempts[1:])]
    for wait, nominal in zip(waits, [0.1, 0.2, 0.2, 0.2]):  # never shorter than 80 % (a loaded runner lengthens)
        assert wait >= 0.8 * nominal - 0.005, (waits, nominal)


def test_a_plain_callable_is_wrapped():
    delivered = []
    sink = QueueSink("list", deliver=delivered.append).start()
    for i in range(100):
        sink.put(i)
    sink.close()
    assert delivered == list(range(100)) and sink.delivered == 100 and sink.dropped == 0


def test_an_undeliverable_item_is_dropped_and_the_rest_go_on(caplog):
    def deliver(item):
        if item == "poison":
            raise Undeliverable("rejected by the target")
        delivered.append(item)

    delivered = []
    sink = QueueSink("picky", deliver=deliver, backoff=FAST).start()
    for item in ("a", "poison", "b"):
        sink.put(item)
    sink.close()
    assert delivered == ["a", "b"] and sink.dropped == 1 and sink.failures == 1
    assert "picky: dropped an item that cannot be delivered: rejected by the target" in caplog.text


def test_a_dead_thread_is_restarted_and_its_item_kept(caplog):
    sink = Recorder(die=1).start()
    sink.put("a")
    wait_until(lambda: not sink._thread.is_alive(), 5, "the thread to die")
    assert "delivery thread died" in caplog.text
    assert sink.ensure_running() and sink.restarts == 1
    assert not sink.ensure_running()
    wait_until(lambda: sink.items == ["a"], 5, "the kept item")
    sink.close()


def test_close_flushes_within_its_timeout_and_counts_the_rest():
    sink = Recorder(fail=10**9).start()
    for i in range(5):
        sink.put(i)
    started = time.monotonic()
    closer = threading.Thread(target=sink.close, kwargs={"timeout": 0.3}, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive()  # it gave up on a target that fails for ever
    assert time.monotonic() - started > 0.25  # after trying for its timeout
    assert sink.delivered == 0 and sink.dropped == 5 and sink.pending == 0

    sink = Recorder().start()
    sink.gate.clear()
    for i in range(5):
        sink.put(i)
    threading.Timer(0.1, sink.gate.set).start()
    sink.close(timeout=5)
    assert sink.items == [0, 1, 2, 3, 4] and sink.dropped == 0


# -- MQTT ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def broker():
    """Keeps sessions across a stop (SIGTERM), so that a QoS 1 subscriber misses nothing of an outage."""
    with Mosquitto(persistent=True) as server:
        yield server


def test_mqtt_states_events_status_and_discovery(broker):
    sub = Subscriber(broker.port, ["t1/#", "homeassistant/binary_sensor/t1/#"], "t1-sub")
    sink = MqttSink(broker.url, prefix="t1", homeassistant=True, backoff=FAST).start()
    sink.announce(["porch"], ["Dog bark", "speech"])
    sink.source_available("porch", True)
    sink.put(event(7, "start"))
    sink.put(event(7, "end"))
    wait_until(lambda: len(sub.payloads("t1/porch/events")) == 2, 10, "2 event messages")
    wait_until(lambda: sink.delivered == 2, 5, "acknowledgements")
    assert [json.loads(p) for p in sub.payloads("t1/porch/events")] == [event(7).to_json(), event(7, "end").to_json()]
    assert sub.payloads("t1/porch/dog_bark") == ["ON", "OFF"]
    assert sub.payloads("t1/status")[-1] == "online"
    config = json.loads(sub.payloads("homeassistant/binary_sensor/t1/porch_dog_bark/config")[-1])
    assert config["state_topic"] == "t1/porch/dog_bark" and config["device_class"] == "sound"
    # available while both the process and the source are: a dead camera's sensors are not "available"
    assert config["availability"] == [{"topic": "t1/status"}, {"topic": "t1/porch/availability"}]
    assert config["availability_mode"] == "all" and config["unique_id"] == "t1_porch_dog_bark"
    assert set(sub.payloads("t1/porch/availability")) == {"online"}  # again on connecting, as discovery
    assert (config["payload_on"], config["payload_off"]) == ("ON", "OFF") and config["device"]["identifiers"]
    sink.close()
    wait_until(lambda: sub.payloads("t1/status")[-1:] == ["offline"], 5, "offline at close")
    sub.close()

    late = Subscriber(broker.port, ["t1/#", "homeassistant/binary_sensor/t1/#"], "t1-late")
    wait_until(lambda: len(late.messages) >= 4, 5, "retained messages")
    retained = {t: p for t, p, r in late.messages if r}
    assert retained["t1/porch/dog_bark"] == "OFF" and retained["t1/status"] == "offline"
    assert retained["t1/porch/availability"] == "offline"  # a clean stop takes every source offline
    assert {"homeassistant/binary_sensor/t1/porch_dog_bark/config",
            "homeassistant/binary_sensor/t1/porch_speech/config"} <= set(retained)
    assert "t1/porch/events" not in retained
    late.close()


@pytest.mark.slow
def test_mqtt_events_from_a_broker_outage_arrive_once_after_it(broker, caplog):
    caplog.set_level(logging.INFO, "audioclip.monitor")
    sub = Subscriber(broker.port, ["t2/porch/events"], "t2-sub")
    sink = MqttSink(broker.url, prefix="t2", backoff=FAST, reconnect_delay=(1, 2)).start()
    sink.put(event(1))
    wait_until(lambda: sink.delivered == 1, 10, "the first event")
    broker.stop()
    for i in range(2, 12):  # ten events during a 10 s outage
        started = time.monotonic()
        sink.put(event(i))
        sink.put(event(i, "end"))
        assert time.monotonic() - started < 0.1
        time.sleep(1.0)
    broker.start()
    wait_until(lambda: sink.delivered == 21, 20, "the outage's events")
    wait_until(lambda: len(sub.payloads("t2/porch/events")) >= 21, 10, "21 messages")
    time.sleep(0.3)
    seen = [(m["id"], m["event"]) for m in map(json.loads, sub.payloads("t2/porch/events"))]
    assert sorted(seen) == sorted({(1, "start")} | {(i, k) for i in range(2, 12) for k in ("start", "end")})
    assert sink.dropped == 0
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1
    sink.close()
    sub.close()


def offline_then_online(payloads: list[str]) -> bool:
    """An ``offline`` then ``online`` last: the sink may say ``online`` twice (it also answers a will it reads)."""
    return "offline" in payloads and payloads[-1] == "online" and payloads.index("offline") < len(payloads) - 1


def test_mqtt_last_will_and_retained_state_back_on_a_restarted_broker_without_persistence():
    with Mosquitto() as bare:
        sink = MqttSink(bare.url, prefix="t4", homeassistant=True, backoff=FAST, reconnect_delay=(0.2, 0.4)).start()
        sink.announce(["porch"], ["Dog bark"])
        sink.put(event(1))
        wait_until(lambda: sink.delivered == 1, 10, "the event")
        sub = Subscriber(bare.port, ["t4/status"], "t4-sub")
        sink._client.socket().shutdown(socket.SHUT_RDWR)  # the link dies without a DISCONNECT
        wait_until(lambda: offline_then_online(sub.payloads("t4/status")[1:]), 10, "the will, then online",
                   lambda: sub.messages)
        stale = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t4-stale")
        stale.connect("127.0.0.1", bare.port)
        stale.loop_start()
        seen = len(sub.payloads("t4/status"))
        stale.publish("t4/status", "offline", qos=1, retain=True).wait_for_publish(5)  # a will landing late
        wait_until(lambda: offline_then_online(sub.payloads("t4/status")[seen:]), 10, "online again",
                   lambda: sub.messages)
        stale.disconnect()
        stale.loop_stop()
        sub.close()
        bare.kill()
        bare.start()  # forgot every retained message
        late = Subscriber(bare.port, ["t4/#", "homeassistant/binary_sensor/t4/#"], "t4-late")
        wait_until(lambda: len(late.messages) >= 3, 10, "retained messages published again", lambda: late.messages)
        retained = {t: p for t, p, r in late.messages}
        assert retained["t4/porch/dog_bark"] == "ON" and retained["t4/status"] == "online"
        assert "homeassistant/binary_sensor/t4/porch_dog_bark/config" in retained
        assert sink.delivered == 1 and sink.dropped == 0
        sink.close()
        late.close()


def test_mqtt_broker_unreachable_at_start_then_up_with_a_password_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    late = Mosquitto()
    url = f"mqtt://watcher:s3cr%40t@127.0.0.1:{late.port}"
    assert parse_broker_url(url).password == "s3cr@t"
    sink = MqttSink(url, prefix="t3", backoff=FAST, reconnect_delay=(0.2, 0.4))
    started = time.monotonic()
    sink.start()
    sink.put(event(1))
    assert time.monotonic() - started < 0.5
    time.sleep(1.5)  # several connection attempts
    assert sum("unreachable" in r.getMessage() and sink.name in r.getMessage() for r in caplog.records) == 1
    with late:
        sub = Subscriber(late.port, ["t3/#"], "t3-sub")
        wait_until(lambda: sink.delivered == 1, 10, "the event after the broker came")
        sink.close()
        wait_until(lambda: "offline" in sub.payloads("t3/status"), 5, "offline")
        sub.close()
    assert "s3cr" not in caplog.text and "watcher" not in caplog.text and "mqtt://***@127.0.0.1" in caplog.text


def test_mqtt_broker_urls_parse_and_names_are_one_line_errors():
    # the URL is [mqtt] url as the configuration validated it (test_monitor_config.py has the bad ones)
    assert parse_broker_url("mqtts://broker").port == 8883 and parse_broker_url("mqtts://broker").tls
    assert parse_broker_url("MQTT://u:p%40ss@broker:1884") == BrokerUrl("broker", 1884, False, "u", "p@ss")
    assert topic_slug("Dog bark!") == "dog_bark" and topic_slug("Glass/break+#") == "glass_break"
    with pytest.raises(ValueError, match="no letters or digits"):
        topic_slug("#/+")


# -- webhooks ---------------------------------------------------------------------------------------

def test_webhook_body_and_signature_verify():
    receiver = Receiver()
    sink = WebhookSink(receiver.url + "/hook", secret="hook-secret", backoff=FAST).start()
    sink.put(event(3))
    wait_until(lambda: sink.delivered == 1, 10, "the POST")
    path, headers, body = receiver.requests[0]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == event(3).to_json()
    expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Audioclip-Signature"], expected)
    sink.close()
    receiver.close()


def test_a_webhook_redirect_is_a_failure_retried_as_the_same_post():
    """A 302 (here to another path) is not followed: it counts as a failed attempt and the POST is retried."""
    receiver = Receiver([302, 307])
    sink = WebhookSink(receiver.url + "/hook", backoff=FAST).start()
    sink.put(event(5))
    wait_until(lambda: sink.delivered == 1, 10, "the delivery")
    assert sink.failures == 2 and sink.dropped == 0
    assert [(path, json.loads(body)["id"]) for path, _, body in receiver.requests] == [("/hook", 5)] * 3
    sink.close()
    receiver.close()


def test_webhook_500_then_200_gets_the_event_once_and_logs_no_secret(caplog):
    caplog.set_level(logging.DEBUG)
    receiver = Receiver([500, 503])
    url = receiver.url.replace("http://", "http://bot:pa55word@") + "/hook?token=t0ken"
    sink = WebhookSink(url, secret="hook-secret", backoff=FAST).start()
    sink.put(event(4))
    sink.put(event(4, "end"))
    wait_until(lambda: sink.delivered == 2, 10, "two deliveries")
    assert [json.loads(b)["event"] for _, _, b in receiver.requests] == ["start", "start", "start", "end"]
    assert sink.failures == 2 and sink.dropped == 0
    assert receiver.requests[-1][0] == "/hook?token=t0ken"
    assert receiver.requests[-1][1]["Authorization"] == "Basic Ym90OnBhNTV3b3Jk"
    assert "HTTP 500" in caplog.text
    for secret in ("pa55word", "t0ken", "hook-secret"):
        assert secret not in caplog.text
    sink.close()
    receiver.close()


def test_webhook_unreachable_is_retried():
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/", backoff=FAST, timeout=1).start()
    sink.put(event(5))
    wait_until(lambda: sink.failures >= 2, 5, "retries")
    sink.close(timeout=0.2)
    assert sink.delivered == 0 and sink.dropped == 1


# -- metrics ----------------------------------------------------------------------------------------

def scrape(metrics: Metrics) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_served_and_parse():
    metrics = Metrics("127.0.0.1:0").start()
    other = Metrics("127.0.0.1:0").start()  # registries of their own: two in one process
    sink = Recorder(queue_size=1)
    metrics.watch_sink(sink)
    metrics.add_source("porch")
    metrics.source_up("porch", True)
    metrics.window("porch", level_dbfs=-20.5, inference_s=0.21)
    metrics.window("porch", level_dbfs=-95.0, inference_s=None)
    metrics.dropped_windows("porch", 3)
    metrics.input_overflows("porch")
    metrics.reconnected("porch")
    metrics.event("porch", "dog bark")
    sink.put(1)
    sink.put(2)  # never started: the first is dropped
    s = scrape(metrics)
    porch = (("source", "porch"),)
    assert s[("audioclip_windows_total", porch)] == 2
    assert s[("audioclip_gated_windows_total", porch)] == 1
    assert s[("audioclip_dropped_windows_total", porch)] == 3
    assert s[("audioclip_input_overflows_total", porch)] == 1
    assert s[("audioclip_reconnects_total", porch)] == 1
    assert s[("audioclip_source_up", porch)] == 1
    assert s[("audioclip_input_level_dbfs", porch)] == -95.0
    assert s[("audioclip_events_total", (("label", "dog bark"), ("source", "porch")))] == 1
    assert s[("audioclip_inference_seconds_count", ())] == 1
    assert s[("audioclip_inference_seconds_bucket", (("le", "0.3"),))] == 1
    assert s[("audioclip_inference_seconds_bucket", (("le", "0.2"),))] == 0
    assert s[("audioclip_sink_dropped_total", (("sink", "recorder"),))] == 1
    assert ("audioclip_windows_total", porch) not in scrape(other)
    with pytest.raises(urllib.error.HTTPError) as answer:  # only /metrics is the metrics
        urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/healthz", timeout=5)
    assert answer.value.code == 404 and b"/metrics" in answer.value.read()
    port = metrics.port
    metrics.close()
    other.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with pytest.raises(ValueError, match="must be host:port with a port 0-65535"):
        Metrics("9108")
