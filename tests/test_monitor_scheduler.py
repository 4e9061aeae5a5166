"""The monitor's inference path: newest-window-wins per source, round-robin fairness, batching."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from audioclip.monitor.scheduler import InferenceScheduler
from audioclip.stream.buffer import Window


class MeanClassifier:
    """Scores a window by its samples: probs = (mean, 1 - mean), so a result shows which window it came from.

    ``delay``: seconds per call (an inference that takes time); ``fail_on``: a mean that raises.
    """

    labels = ["a", "b"]

    def __init__(self, delay: float = 0.0, fail_on: float | None = None):
        self.delay, self.fail_on, self.batches = delay, fail_on, []

    def scores(self, waveform):
        self.batches.append(waveform.shape)
        time.sleep(self.delay)
        mean = waveform.mean(axis=1)
        if self.fail_on is not None and np.any(np.isclose(mean, self.fail_on)):
            raise RuntimeError("cannot score this window")
        probs = np.stack([mean, 1 - mean], axis=1)
        return probs, probs * 2


def window(index: int, value: float | None = None, length: int = 100) -> Window:
    value = index / 1000 if value is None else value
    return Window(index, index * length, np.full(length, value, np.float32), time.monotonic())


class Collector:
    def __init__(self):
        self.results, self.lock = {}, threading.Lock()

    def __call__(self, name):
        def on_result(w, probs, sims, seconds):
            with self.lock:
                self.results.setdefault(name, []).append((w.index, float(probs[0]), float(sims[0]), seconds))
        return on_result


def test_a_newer_window_replaces_the_pending_one_and_is_counted_as_dropped():
    collect = Collector()
    scheduler = InferenceScheduler(MeanClassifier())
    scheduler.add_source("porch", collect("porch"))
    assert [scheduler.submit("porch", window(i)) for i in range(3)] == [False, True, True]
    scheduler.drop("porch")
    scheduler.start()
    scheduler.close()
    counters = scheduler.counters("porch")
    assert (counters.submitted, counters.processed, counters.dropped) == (4, 1, 3)
    assert [r[0] for r in collect.results["porch"]] == [2]  # the newest one
    assert collect.results["porch"][0][1] == pytest.approx(0.002) and collect.results["porch"][0][2] == \
        pytest.approx(0.004)


def test_a_busy_source_does_not_starve_a_quiet_one():
    collect = Collector()
    scheduler = InferenceScheduler(MeanClassifier(delay=0.002)).start()
    scheduler.add_source("busy", collect("busy"))
    scheduler.add_source("quiet", collect("quiet"))
    stop = threading.Event()

    def feed(name, every, counter):
        i = 0
        while not stop.is_set():
            scheduler.submit(name, window(i))
            counter.append(i)
            i += 1
            time.sleep(every)

    busy, quiet = [], []
    threads = [threading.Thread(target=feed, args=("busy", 0.0005, busy)),
               threading.Thread(target=feed, args=("quiet", 0.05, quiet))]
    for t in threads:
        t.start()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    scheduler.close()
    b, q = scheduler.counters("busy"), scheduler.counters("quiet")
    assert b.submitted >= 10 * q.submitted > 0
    # round-robin: the quiet source's window is taken within one of the busy source's inferences
    assert q.dropped == 0 and q.processed == q.submitted == len(quiet)
    assert b.processed > 0 and b.dropped > 0 and b.processed + b.dropped == b.submitted == len(busy)


def test_results_of_each_source_arrive_in_order():
    collect = Collector()
    scheduler = InferenceScheduler(MeanClassifier(delay=0.001)).start()
    names = ["a", "b", "c"]
    for name in names:
        scheduler.add_source(name, collect(name))

    def feed(name):
        for i in range(200):
            scheduler.submit(name, window(i), wait=name == "c")  # c waits: it drops nothing
            time.sleep(0.0002)

    threads = [threading.Thread(target=feed, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.close()
    for name in names:
        indices = [r[0] for r in collect.results[name]]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)
        assert indices[-1] == 199  # the newest window is never lost
        counters = scheduler.counters(name)
        assert counters.processed == len(indices) and counters.processed + counters.dropped == 200
        assert all(r[1] == pytest.approx(r[0] / 1000) for r in collect.results[name])
    assert scheduler.counters("c").dropped == 0 and len(collect.results["c"]) == 200


def test_windows_ready_together_go_through_one_batch_and_back_to_their_sources():
    collect = Collector()
    classifier = MeanClassifier()
    scheduler = InferenceScheduler(classifier, batch=4)
    for name, value in (("x", 0.1), ("y", 0.2), ("z", 0.3)):
        scheduler.add_source(name, collect(name))
        scheduler.submit(name, window(7, value))
    scheduler.add_source("long", collect("long"))
    scheduler.submit("long", window(1, 0.9, length=150))  # another length: its own call
    scheduler.start()
    scheduler.close()
    assert sorted(classifier.batches) == [(1, 150), (3, 100)]
    assert {name: rows[0][1] for name, rows in collect.results.items()} == pytest.approx(
        {"x": 0.1, "y": 0.2, "z": 0.3, "long": 0.9})


def test_round_robin_serves_every_other_source_before_coming_back():
    served = []
    scheduler = InferenceScheduler(MeanClassifier())
    for name in "abc":
        scheduler.add_source(name, lambda w, p, s, t, name=name: served.append(name))
    gate = threading.Event()
    scheduler.add_source("gate", lambda *_: gate.wait(5))
    scheduler.submit("gate", window(0))
    scheduler.start()
    time.sleep(0.05)  # the thread is held in the gate's callback while all three sources queue
    for name in "abc":
        scheduler.submit(name, window(1))
    gate.set()
    scheduler.close()
    assert served == ["a", "b", "c"]


def test_a_failing_window_or_callback_is_counted_and_the_rest_goes_on(caplog):
    collect = Collector()
    scheduler = InferenceScheduler(MeanClassifier(fail_on=0.5)).start()
    scheduler.add_source("ok", collect("ok"))

    def broken(*_):
        raise ValueError("sink exploded")

    scheduler.add_source("broken", broken)
    scheduler.submit("ok", window(0, 0.5), wait=True)
    scheduler.submit("ok", window(1, 0.25), wait=True)
    for i in range(12):
        scheduler.submit("broken", window(i), wait=True)
    scheduler.close()
    ok, bad = scheduler.counters("ok"), scheduler.counters("broken")
    assert (ok.processed, ok.errors) == (1, 1) and [r[0] for r in collect.results["ok"]] == [1]
    assert (bad.processed, bad.errors) == (0, 12)
    logged = [r.getMessage() for r in caplog.records if r.name == "audioclip.monitor.scheduler"]
    assert len(logged) == 3  # ok's error, broken's 1st and 10th: not one line per window
    assert "source broken" in logged[1] and "sink exploded" in logged[1]


def test_removing_a_source_releases_a_waiting_submitter_and_keeps_the_others():
    collect = Collector()
    scheduler = InferenceScheduler(MeanClassifier())
    scheduler.add_source("a", collect("a"))
    scheduler.add_source("b", collect("b"))
    scheduler.submit("a", window(0))
    scheduler.submit("b", window(0))
    assert scheduler.remove_source("a").submitted == 1
    with pytest.raises(KeyError):
        scheduler.submit("a", window(1))
    scheduler.start()
    scheduler.close()
    assert list(collect.results) == ["b"]
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit("b", window(1))


def test_batch_must_be_positive():
    with pytest.raises(ValueError, match="batch must be a whole number of at least 1, got 0"):
        InferenceScheduler(MeanClassifier(), batch=0)
