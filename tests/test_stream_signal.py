"""Stream building blocks: mixdown, the streaming resampler, the ring buffer, window scheduling, smoothing, events."""

import threading

import numpy as np
import pytest
import soxr

from audioclip.model.constants import SAMPLE_RATE
from audioclip.stream.buffer import BlockRing, WindowScheduler
from audioclip.stream.postprocess import EventDetector, Smoother
from audioclip.stream.resample import StreamResampler, to_mono


def test_to_mono_averages_channels():
    block = np.array([[1.0, 0.0], [0.5, -0.5], [-1.0, -1.0]], np.float32)
    np.testing.assert_array_equal(to_mono(block), [0.5, 0.0, -1.0])
    assert to_mono(block[:, :1]).tolist() == [1.0, 0.5, -1.0]
    with pytest.raises(ValueError, match="frames"):
        to_mono(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("rate", [48000, 16000, 22050, 96000])
def test_resampling_in_blocks_equals_resampling_the_whole_signal(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(rate * 2)).astype(np.float32)
    whole = soxr.resample(x, rate, SAMPLE_RATE, quality="VHQ")
    resampler = StreamResampler(rate)
    sizes = rng.integers(1, 5000, size=len(x))
    pieces, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        pieces.append(resampler.process(x[i:i + n]))
        i += n
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    assert len(streamed) == len(whole) == round(len(x) * SAMPLE_RATE / rate)
    delay = 64  # the filter's start-up transient; the two agree after it (and in fact before it too)
    assert np.abs(streamed[delay:] - whole[delay:]).max() <= 1e-5
    # the output is aligned with the input: a 1 kHz tone keeps its phase
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    r = StreamResampler(rate)
    out = np.concatenate([r.process(tone[:rate // 2]), r.process(tone[rate // 2:]), r.flush()])
    expected = np.sin(2 * np.pi * 1000 * np.arange(len(out)) / SAMPLE_RATE)
    assert np.abs(out[1000:-1000] - expected[1000:-1000]).max() < 1e-3


def test_resampler_passes_44k1_through_untouched():
    r = StreamResampler(SAMPLE_RATE)
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    assert r.passthrough and r.process(x) is not None
    np.testing.assert_array_equal(r.process(x), x)
    assert len(r.flush()) == 0
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0)


def test_block_ring_copies_in_order_and_counts_overflows():
    ring = BlockRing(capacity=10, channels=2)
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    ring.write(a)
    out, _ = ring.read()
    np.testing.assert_array_equal(out, a)
    ring.write(a)  # wraps around the end of the ring
    ring.write(a)  # 12 frames > capacity 10: dropped and counted
    assert ring.overflows == 1 and ring.overflow_frames == 6
    out, stamp = ring.read()
    np.testing.assert_array_equal(out, a)
    assert stamp > 0 and len(ring) == 0
    assert len(ring.read(timeout=0.01)[0]) == 0


def test_block_ring_under_a_concurrent_writer():
    ring = BlockRing(capacity=4096, channels=1)
    total = 200_000

    def writer():
        for start in range(0, total, 256):
            block = np.arange(start, min(start + 256, total), dtype=np.float32)[:, None]
            while ring.capacity - len(ring) < len(block):  # a real callback would drop; here we wait
                pass
            ring.write(block)

    thread = threading.Thread(target=writer)
    thread.start()
    got = []
    while sum(map(len, got)) < total:
        got.append(ring.read(timeout=0.01)[0][:, 0])
    thread.join()
    np.testing.assert_array_equal(np.concatenate(got), np.arange(total, dtype=np.float32))
    assert ring.overflows == 0


def test_windows_cover_k_hop_to_k_hop_plus_window_and_are_ready_at_their_last_sample():
    s = WindowScheduler(window=10, hop=4)
    x = np.arange(30, dtype=np.float32)
    seen = {}
    for i in range(0, 30, 3):
        for k in s.push(x[i:i + 3], arrival=float(i)):
            assert s.total >= 4 * k + 10 and s.total - 3 < 4 * k + 10  # the push that completed it
            w = s.take(k)
            seen[k] = w
            np.testing.assert_array_equal(w.samples, x[4 * k:4 * k + 10])
            assert w.start == 4 * k and w.arrival == float(i)
    assert sorted(seen) == [0, 1, 2, 3, 4, 5]  # 4*5+10 = 30 <= 30 < 4*6+10
    assert s.finish() is None


def test_skipped_windows_are_not_returned_again_and_short_streams_pad_one_window():
    s = WindowScheduler(window=8, hop=2, slack=2)
    assert s.push(np.ones(4, np.float32), 0.0) == []
    assert s.push(np.ones(3, np.float32), 0.0) == []
    ready = s.push(np.ones(3, np.float32), 0.0)
    assert ready == [0, 1]
    s.skip(0)
    assert s.ready() == [1]
    assert s.take(1).start == 2
    assert s.ready() == []
    short = WindowScheduler(window=8, hop=5)
    short.push(np.full(5, 0.5, np.float32), 1.0)
    padded = short.finish()
    assert padded.index == 0 and padded.samples.tolist() == [0.5] * 5 + [0.0] * 3
    assert short.finish() is None
    for shortest, expected in ((None, 8), (3, 5), (7, 7), (20, 8)):  # padded only as far as the model needs
        short = WindowScheduler(window=8, hop=5)
        short.push(np.full(5, 0.5, np.float32), 1.0)
        assert short.finish(shortest).samples.tolist() == [0.5] * 5 + [0.0] * (expected - 5)
    with pytest.raises(ValueError, match="at most"):
        WindowScheduler(window=8, hop=2).push(np.zeros(3, np.float32), 0.0)


def test_smoother_is_a_moving_average():
    s = Smoother(3)
    assert s(np.array([1.0, 0.0])).tolist() == [1.0, 0.0]
    assert s(np.array([0.0, 1.0])).tolist() == [0.5, 0.5]
    s(np.array([0.0, 1.0]))
    np.testing.assert_allclose(s(np.array([0.0, 1.0])), [0.0, 1.0])  # the first fell out
    assert Smoother(1)(np.array([0.2, 0.8])).tolist() == [0.2, 0.8]
    with pytest.raises(ValueError):
        Smoother(0)


def test_events_start_above_threshold_and_end_below_threshold_minus_hysteresis():
    d = EventDetector(["siren", "dog"], threshold=0.6, hysteresis=0.1)
    trace = [0.5, 0.65, 0.55, 0.9, 0.52, 0.49, 0.7]
    out = []
    for t, p in enumerate(trace):
        out += [(e.kind, e.label, e.t, e.peak) for e in d.update(float(t), np.array([p, 1 - p]))]
    out += [(e.kind, e.label, e.t, e.peak) for e in d.close(7.0)]
    assert out == [("start", "siren", 1.0, 0.65), ("end", "siren", 5.0, 0.9),  # 0.55 and 0.52 stay inside
                   ("start", "siren", 6.0, 0.7), ("end", "siren", 7.0, 0.7)]
    assert d.counts == {"siren": 2, "dog": 0} and d.durations["siren"] == 5.0 and d.peaks["siren"] == 0.9
    with pytest.raises(ValueError, match="hysteresis"):
        EventDetector(["a"], threshold=0.3, hysteresis=0.3)
    with pytest.raises(ValueError, match="threshold"):
        EventDetector(["a"], threshold=1.5)
