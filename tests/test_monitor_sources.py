"""Network and resilient sources against real local servers: GStreamer RTSP, an ffmpeg HTTP MP3 stream.

The servers (tests/servers.py) run on 127.0.0.1 free ports; tests kill, pause and restart them.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from audioclip.monitor.sources import SourceError, UrlSource, redact
from audioclip.monitor.supervisor import (
    BACKING_OFF,
    CONNECTING,
    UP,
    Block,
    ResilientSource,
    StreamGap,
    device_opener,
    file_opener,
    url_opener,
)

from servers import HttpStream, RtspServer, free_port

SUPERVISOR_LOG = "audioclip.monitor.supervisor"


class Reader:
    """Consumes a ResilientSource on a thread, recording ``(time.monotonic(), item)``."""

    def __init__(self, source: ResilientSource):
        self.source, self.items = source, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.source:
            self.items.append((time.monotonic(), item))

    def blocks(self, after: float = 0.0) -> list[Block]:
        return [item for t, item in list(self.items) if isinstance(item, Block) and t >= after]

    def gaps(self) -> list[StreamGap]:
        return [item for _, item in list(self.items) if isinstance(item, StreamGap)]

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {timeout} s; state {self.source.state}, " \
                                                f"last error {self.source.last_error}"
            time.sleep(0.05)

    def close(self) -> float:
        """Close the source; the seconds close() took."""
        t0 = time.monotonic()
        self.source.close()
        took = time.monotonic() - t0
        self.thread.join(3)
        assert not self.thread.is_alive(), "the iteration did not end after close()"
        return took


def _resilient(url: str, name: str, **kwargs) -> ResilientSource:
    timeouts = {"open_timeout": kwargs.pop("open_timeout", 5.0), "read_timeout": kwargs.pop("read_timeout", 5.0)}
    return ResilientSource(url_opener(url, name=name, **timeouts), name=name, **kwargs)


@pytest.fixture(scope="module")
def second_rtsp(stream_wav):
    with RtspServer(stream_wav) as server:
        yield server


def test_unsupported_scheme_is_a_one_line_error_without_credentials():
    for url in ("ftp://user:hunter2@example.org/a.mp3", "camera.local/stream"):
        with pytest.raises(ValueError) as caught:
            UrlSource(url, name="x")
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message, message
        assert ("'ftp'" in message or "no URL scheme" in message) and "rtsp" in message, message
    with pytest.raises(ValueError, match="unsupported URL scheme 'gopher'"):
        url_opener("gopher://x/", name="x")  # at configuration time, not at the first retry


def test_http_errors_and_unknown_hosts_read_without_ffmpegs_errno():
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    messages = []
    try:
        for url in (f"http://127.0.0.1:{server.server_address[1]}/radio.mp3", "http://no-such-host.invalid/radio.mp3"):
            with pytest.raises(SourceError) as caught:
                UrlSource(url, name="radio", open_timeout=5.0).open()
            messages.append(str(caught.value))
    finally:
        server.shutdown()
        server.server_close()
    assert messages[0].endswith("/radio.mp3: cannot open: Server returned 404 Not Found"), messages
    assert messages[1] == "http://no-such-host.invalid/radio.mp3: cannot open: unknown host no-such-host.invalid"
    assert not any("Errno" in m for m in messages), messages


def test_redact_removes_user_and_password_from_every_url_in_a_text():
    text = "rtsp://admin:pa55@cam.local:554/s1 failed; then http://bob@radio/x and https://plain.org/"
    assert redact(text) == "rtsp://***@cam.local:554/s1 failed; then http://***@radio/x and https://plain.org/"


def test_rtsp_source_decodes_48k_stereo_float32(rtsp_server, stream_wav):
    source = UrlSource(rtsp_server.url, name="cam", open_timeout=5.0, read_timeout=5.0)
    assert (source.rate, source.channels) == (None, None)  # known once connected
    blocks = []
    for block, _ in source.blocks():
        assert block.dtype == np.float32 and block.ndim == 2 and block.shape[1] == 2
        blocks.append(block)
        if sum(len(b) for b in blocks) >= 48000:
            break
    source.close()
    assert (source.rate, source.channels) == (48000.0, 2)
    audio = np.concatenate(blocks)
    # the mono file, duplicated by the server (audioconvert dithers each channel: a few LSB apart)
    np.testing.assert_allclose(audio[:, 0], audio[:, 1], rtol=0, atol=4 / 32768)
    # the file's first second, resampled by GStreamer to 48 kHz: the same loudness
    original = sf.read(stream_wav, frames=44100, dtype="float32")[0]
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(audio[:, 0]) == pytest.approx(rms(original), rel=0.1)
    assert np.abs(audio).max() <= 1.0


@pytest.mark.slow
def test_rtsp_server_killed_for_5s_reconnects_once_while_another_source_keeps_delivering(
        rtsp_server, second_rtsp, caplog):
    caplog.set_level(logging.DEBUG, logger=SUPERVISOR_LOG)
    cam = Reader(_resilient(rtsp_server.url, "cam"))
    other = Reader(_resilient(second_rtsp.url, "other"))
    try:
        cam.wait_for(lambda: cam.source.up and other.source.up, 10, "both sources up")
        time.sleep(1.0)
        killed = time.monotonic()
        rtsp_server.kill()
        time.sleep(5.0)
        rtsp_server.start()
        cam.wait_for(lambda: cam.blocks(after=killed + 5.0), 15, "cam blocks after the restart")
        time.sleep(0.5)
    finally:
        cam.close(), other.close()
        rtsp_server.start()  # the session's server stays up for the tests that follow
    assert cam.source.reconnects == 1
    (gap,) = cam.gaps()
    assert 5.0 <= gap.seconds < 20.0 and cam.source.seconds_lost == pytest.approx(gap.seconds)
    items = [item for _, item in cam.items]
    after = items[next(i for i, item in enumerate(items) if isinstance(item, StreamGap)) + 1:]
    assert after and all(isinstance(b, Block) and (b.rate, b.channels) == (48000.0, 2) for b in after)
    # the other source never paused: no gap, no reconnect, blocks arriving all along
    assert other.source.reconnects == 0 and not other.gaps()
    stamps = [t for t, item in other.items if isinstance(item, Block)]
    assert stamps[0] < killed and stamps[-1] > killed + 5.0
    assert max(np.diff(stamps)) < 1.0
    # one line down, one line up; the retries in between only at DEBUG
    cam_lines = [r for r in caplog.records if r.getMessage().startswith("cam:") and r.levelno >= logging.INFO]
    assert [r.levelname for r in cam_lines] == ["INFO", "WARNING", "INFO"], [r.getMessage() for r in cam_lines]
    assert "reconnecting" in cam_lines[1].getMessage() and "up again" in cam_lines[2].getMessage()


@pytest.mark.slow
def test_http_mp3_stream_reads_and_reconnects_after_the_server_restarts(stream_wav):
    with HttpStream(stream_wav) as server:
        radio = Reader(_resilient(server.url, "radio"))
        try:
            radio.wait_for(lambda: radio.blocks(), 15, "MP3 audio")
            first = radio.blocks()[0]
            assert (first.rate, first.channels) == (44100.0, 1) and first.samples.dtype == np.float32
            restarted = time.monotonic()
            server.kill()
            server.start()
            radio.wait_for(lambda: radio.blocks(after=restarted + 0.5), 20, "audio after the restart")
        finally:
            radio.close()
    assert radio.source.reconnects == 1 and len(radio.gaps()) == 1


def test_unreachable_rtsp_at_start_keeps_trying_and_comes_up_when_the_server_starts(stream_wav):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    cam = Reader(_resilient(url, "late", backoff=(0.2, 1.0)))
    try:
        time.sleep(1.5)
        assert cam.source.state in (CONNECTING, BACKING_OFF) and not cam.source.up
        assert cam.thread.is_alive() and cam.source.last_error and not cam.items
        with RtspServer(stream_wav, port):
            cam.wait_for(lambda: cam.blocks(), 10, "audio once the server is up")
            assert cam.source.state == UP and cam.source.reconnects == 0 and not cam.gaps()
    finally:
        cam.close()


@pytest.mark.slow
def test_a_silent_server_is_a_stall_and_close_returns_promptly(second_rtsp):
    cam = Reader(_resilient(second_rtsp.url, "stalled", stall_seconds=1.5, read_timeout=1.5, open_timeout=3.0))
    try:
        cam.wait_for(lambda: cam.source.up, 10, "up")
        os.killpg(second_rtsp.process.pid, signal.SIGSTOP)  # the connection stays open, nothing arrives
        stopped = time.monotonic()
        cam.wait_for(lambda: not cam.source.up, 5, "the stall detected")
        assert time.monotonic() - stopped < 4.0
        assert "no audio" in cam.source.last_error or "read failed" in cam.source.last_error
        cam.wait_for(lambda: cam.source.state == CONNECTING, 5, "a new attempt")
        assert cam.close() < 3.0  # while av.open waits on the paused server
    finally:
        os.killpg(second_rtsp.process.pid, signal.SIGCONT)
        cam.source.close()


def test_credentials_never_reach_the_log(caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="audioclip")  # a CLI test run in this process may have set it to INFO
    url = f"rtsp://admin:s3cr3t@127.0.0.1:{free_port()}/live"
    cam = Reader(_resilient(url, "secret", backoff=(0.1, 0.2)))
    try:
        cam.wait_for(lambda: len([r for r in caplog.records if "secret:" in r.getMessage()]) >= 3, 10,
                     "three failed attempts logged")
    finally:
        cam.close()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("s3cr3t" in m or "admin" in m for m in messages), messages
    assert any("rtsp://***@127.0.0.1" in m for m in messages) and "s3cr3t" not in cam.source.last_error
    with pytest.raises(SourceError) as caught:
        next(UrlSource(url, name="x", open_timeout=2.0).blocks())
    assert "s3cr3t" not in str(caught.value) and "***@" in str(caught.value)
    in_query = f"http://127.0.0.1:{free_port()}/cgi-bin/audio?user=admin&password=s3cr3t&channel=1"
    with pytest.raises(SourceError) as caught:
        UrlSource(in_query, name="x", open_timeout=2.0).open()
    assert "s3cr3t" not in str(caught.value) and "password=***&channel=1" in str(caught.value), caught.value


def test_looped_file_plays_on_and_a_consumer_that_falls_behind_gets_a_gap(tmp_path):
    clip = tmp_path / "short.wav"
    sf.write(clip, np.full((4410, 1), 0.25, np.float32), 44100)  # 0.1 s
    looped = ResilientSource(file_opener(clip, loop=True, realtime=True), name="loop", max_blocks=4)
    looped.start()
    time.sleep(0.8)  # about 16 blocks of 50 ms while nobody reads: the oldest are dropped
    items = []
    for item in looped:
        items.append(item)
        if sum(len(i.samples) for i in items if isinstance(i, Block)) >= 44100:
            break
    looped.close()
    assert isinstance(items[0], StreamGap) and "dropped" in items[0].reason
    assert items[0].seconds == pytest.approx(looped.overflows * 0.05, abs=1e-6) and looped.overflows >= 8
    blocks = [i for i in items[1:] if isinstance(i, Block)]
    assert len(blocks) == len(items) - 1  # one second of a 0.1-s file: looping is no gap
    assert all(np.all(b.samples == 0.25) for b in blocks) and looped.reconnects == 0


class TwoRates:
    """A source whose rate changes mid-connection (a camera that switches codec): 0.5 s at 16 kHz, then 48 kHz."""

    def __init__(self):
        self.rate, self.channels, self.live, self.name, self.overflows = 16000.0, 1, True, "two-rates", 0

    def blocks(self):
        for rate in (16000.0, 48000.0):
            self.rate = rate
            for _ in range(5):
                time.sleep(0.1)
                yield np.zeros((int(rate) // 10, 1), np.float32), time.monotonic()
        while True:
            time.sleep(0.1)
            yield np.zeros((4800, 1), np.float32), time.monotonic()

    def close(self):
        pass


def test_a_rate_change_within_a_connection_is_a_gap_of_no_seconds():
    source = ResilientSource(TwoRates, name="two-rates")
    items = []
    for item in source:
        items.append(item)
        if len(items) == 12:
            break
    source.close()
    assert [type(i).__name__ for i in items] == ["Block"] * 5 + ["StreamGap"] + ["Block"] * 6
    assert items[5] == StreamGap(0.0, "format changed to 48000 Hz, 1 ch")
    assert {b.rate for b in items[:5]} == {16000.0} and {b.rate for b in items[6:]} == {48000.0}
    assert source.reconnects == 0 and source.seconds_lost == 0.0


def _null_sink_module() -> tuple[str, str]:
    """The index and arguments of the PulseAudio null sink module (.ci/pulseaudio.sh loads one)."""
    listing = subprocess.run(["pactl", "list", "short", "modules"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if fields[1] == "module-null-sink":
            return fields[0], fields[2]
    raise AssertionError(f"no module-null-sink loaded: {listing.stdout}")


@pytest.fixture
def pulse_null_sink():
    problem = None
    if not os.environ.get("PULSE_SERVER"):
        problem = "PULSE_SERVER is not set: start the null sink with `eval \"$(.ci/pulseaudio.sh start)\"`"
    elif shutil.which("pactl") is None or subprocess.run(["pactl", "info"], capture_output=True).returncode:
        problem = f"no PulseAudio server answers at {os.environ['PULSE_SERVER']} (or pactl is missing)"
    if problem:
        if os.environ.get("AUDIOCLIP_REQUIRE_DEVICE") == "1":
            pytest.fail(f"AUDIOCLIP_REQUIRE_DEVICE=1 but {problem}")
        pytest.skip(problem)
    index, arguments = _null_sink_module()
    yield index, arguments
    modules = subprocess.run(["pactl", "list", "short", "modules"], capture_output=True, text=True).stdout
    if "module-null-sink" not in modules:
        _load_null_sink(arguments)  # a failed test leaves the device tests that follow their input


def _load_null_sink(arguments: str) -> None:
    subprocess.run(["pactl", "load-module", "module-null-sink", *arguments.split()], check=True, capture_output=True)
    sink = arguments.split("sink_name=")[1].split()[0]
    subprocess.run(["pactl", "set-default-sink", sink], check=True)
    subprocess.run(["pactl", "set-default-source", f"{sink}.monitor"], check=True)


@pytest.mark.audio_device
def test_pulseaudio_device_comes_back_after_its_sink_is_unloaded_and_loaded_again(pulse_null_sink, tmp_path):
    index, arguments = pulse_null_sink
    sink = arguments.split("sink_name=")[1].split()[0]
    tone = tmp_path / "tone.wav"
    sf.write(tone, 0.5 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100), 44100, subtype="PCM_16")
    mic = Reader(ResilientSource(device_opener("pulse"), name="mic", stall_seconds=3.0, backoff=(0.5, 2.0)))
    try:
        mic.wait_for(lambda: mic.blocks(), 10, "audio from the null sink's monitor")
        subprocess.run(["pactl", "unload-module", index], check=True)
        mic.wait_for(lambda: not mic.source.up, 5, "the device lost")
        time.sleep(2.0)  # attempts while the device is gone fail quietly
        assert not mic.source.up and mic.source.reconnects == 0
        reloaded = time.monotonic()
        _load_null_sink(arguments)
        mic.wait_for(lambda: mic.blocks(after=reloaded), 15, "audio after the sink is back")
        played = time.monotonic()
        subprocess.run(["paplay", f"--device={sink}", str(tone)], check=True, timeout=20)
        mic.wait_for(lambda: any(np.abs(b.samples).max() > 0.1 for b in mic.blocks(after=played)), 5,
                     "the tone played into the reloaded sink")
    finally:
        mic.close()
    assert mic.source.reconnects == 1 and len(mic.gaps()) == 1 and mic.gaps()[0].seconds >= 2.0


@pytest.mark.slow
def test_a_connection_that_stayed_up_starts_the_backoff_afresh(stream_wav, monkeypatch, caplog):
    """Up for ``STABLE_SECONDS`` (30 s in production, 2 s here), the next failure waits the shortest time
    again, however long the backoff had grown before."""
    from audioclip.monitor import supervisor

    monkeypatch.setattr(supervisor, "STABLE_SECONDS", 2.0)
    caplog.set_level(logging.DEBUG, logger=SUPERVISOR_LOG)
    with RtspServer(stream_wav) as server:
        cam = Reader(_resilient(server.url, "cam", backoff=(0.2, 3.2)))
        try:
            cam.wait_for(lambda: cam.source.up, 20, "up")
            server.kill()
            cam.wait_for(lambda: "attempt 4 failed" in caplog.text, 20, "the backoff grown to 1.6 s")
            server.start()
            cam.wait_for(lambda: cam.source.reconnects == 1, 20, "up again")
            time.sleep(2.5)  # up longer than STABLE_SECONDS
            server.kill()  # and left down: refused attempts log at once
            cam.wait_for(lambda: caplog.text.count("attempt 2 failed") == 2, 10, "the first retry")
        finally:
            cam.close()
    records = [r for r in caplog.records if r.getMessage().startswith("cam:")]
    second_down = [i for i, r in enumerate(records) if "reconnecting with backoff" in r.getMessage()][1]
    retry = records[second_down + 1]
    assert "attempt 2 failed" in retry.getMessage()
    # afresh: 0.2 s (+-20 %); the grown backoff would have waited at least 0.8 x 3.2 = 2.56 s
    assert retry.created - records[second_down].created < 1.5


def test_retries_back_off_doubling_with_jitter_up_to_the_longest_wait(caplog):
    caplog.set_level(logging.DEBUG, logger=SUPERVISOR_LOG)
    source = Reader(_resilient(f"rtsp://127.0.0.1:{free_port()}/live", "refused", backoff=(0.1, 0.4)))
    try:
        source.wait_for(lambda: len([r for r in caplog.records if r.getMessage().startswith("refused:")]) >= 8, 60,
                        "eight failed attempts")
    finally:
        source.close()
    stamps = [r.created for r in caplog.records if r.getMessage().startswith("refused:")][:8]
    waits = np.diff(stamps)
    # 0.1, 0.2, 0.4, 0.4, ... less 20 % jitter at most: a wait is never shorter (a loaded runner only
    # lengthens them, so no tight upper bound), and it stops doubling at the longest: doubling on, the
    # fifth wait would be at least 0.8 x 1.6 = 1.28 s, which no capped wait comes near
    for wait, nominal in zip(waits, [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4]):
        assert 0.8 * nominal - 0.01 <= wait, (list(waits), nominal)
    assert max(waits[3:]) < 1.28, list(waits)
    assert len(set(np.round(waits[2:], 3))) > 1  # jittered, not in lockstep with other sources
    levels = [r.levelname for r in caplog.records if r.getMessage().startswith("refused:")]
    assert levels[0] == "WARNING" and set(levels[1:]) == {"DEBUG"}


def test_a_corrupt_packet_is_skipped_and_counted_not_the_end_of_the_stream(clips_dir, tmp_path):
    mp3 = tmp_path / "cat.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clips_dir / "cat_3-95694-A-5.wav"),
                    "-f", "mp3", str(mp3)], check=True)
    data = bytearray(mp3.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    mp3.write_bytes(bytes(data))
    source = UrlSource(mp3.as_uri(), name="glitchy")
    assert not source.live  # a file URL is read as fast as it is consumed
    frames = 0
    with pytest.raises(SourceError, match="stream ended"):
        for block, _ in source.blocks():
            frames += len(block)
    assert source.decode_errors >= 1
    assert 4.0 < frames / source.rate < 5.0  # the 5-s clip less the damaged packets


@pytest.mark.audio_device
def test_a_suspended_device_is_a_stall_the_source_comes_back_and_close_never_blocks(pulse_null_sink):
    _, arguments = pulse_null_sink
    sink = arguments.split("sink_name=")[1].split()[0]
    mic = Reader(ResilientSource(device_opener("pulse"), name="mic", stall_seconds=1.5, backoff=(0.5, 1.0)))
    try:
        mic.wait_for(lambda: mic.blocks(), 10, "audio from the null sink's monitor")
        subprocess.run(["pactl", "suspend-sink", sink, "true"], check=True)
        suspended = time.monotonic()
        mic.wait_for(lambda: not mic.source.up, 4, "the stall detected")  # PortAudio blocks in stop() meanwhile
        assert time.monotonic() - suspended < 3.0 and "no audio for 1.5 s" in mic.source.last_error
        time.sleep(1.0)
        resumed = time.monotonic()
        subprocess.run(["pactl", "suspend-sink", sink, "false"], check=True)
        mic.wait_for(lambda: mic.blocks(after=resumed + 0.2), 10, "audio after the sink resumed")
        subprocess.run(["pactl", "suspend-sink", sink, "true"], check=True)
        time.sleep(2.0)  # stalled again: close() must not wait for the device
        assert mic.close() < 3.0
    finally:
        subprocess.run(["pactl", "suspend-sink", sink, "false"], check=True)
        mic.source.close()
    assert mic.source.reconnects == 1 and len(mic.gaps()) == 1


def _alsa_mics(home, *mics: tuple[str, str]) -> None:
    """Write ``home/.asoundrc`` so that PortAudio lists each ``(name, PulseAudio source)`` as a microphone."""
    rc = "".join(f'pcm."{name}" {{ type pulse device "{source}" }}\n' for name, source in mics)
    (home / ".asoundrc").write_text(rc)


@pytest.mark.audio_device
def test_a_microphone_back_under_another_name_and_index_is_found_and_the_other_one_reopens_once(
        pulse_null_sink, tmp_path, monkeypatch, caplog):
    # Two microphones as ALSA devices over PulseAudio sources: "USB Mic Audio (hw 1,0)" goes away and
    # comes back as "USB Mic Audio (hw 2,0)" at another index, as a replugged USB card does on Linux.
    from audioclip.stream import devices

    caplog.set_level(logging.INFO)
    _, arguments = pulse_null_sink
    sink = arguments.split("sink_name=")[1].split()[0]
    desk = subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=audioclip_desk"],
                          capture_output=True, text=True, check=True).stdout.strip()
    usb_mic, desk_mic = ("USB Mic Audio (hw 1,0)", f"{sink}.monitor"), ("Desk Mic", "audioclip_desk.monitor")
    monkeypatch.setenv("HOME", str(tmp_path))  # ALSA reads ~/.asoundrc when PortAudio starts
    _alsa_mics(tmp_path, usb_mic, desk_mic)
    devices.restart_portaudio("a test's devices")
    first = {d.name: d.index for d in devices.list_input_devices()}[usb_mic[0]]
    # the usb source waits 3 s between attempts: its sink is gone before it reopens (PulseAudio would move a
    # stream open on it to the other sink, where no USB device would deliver)
    usb = Reader(ResilientSource(device_opener(usb_mic[0]), name="usb", stall_seconds=2.0, backoff=(3.0, 3.0)))
    other = Reader(ResilientSource(device_opener("Desk Mic"), name="desk", stall_seconds=2.0, backoff=(0.5, 1.0)))
    try:
        usb.wait_for(lambda: usb.blocks() and other.blocks(), 10, "audio from both microphones")
        subprocess.run(["pactl", "suspend-sink", sink, "true"], check=True)  # unplugged: it stalls, then is gone
        usb.wait_for(lambda: not usb.source.up, 5, "the unplugged microphone down")
        module = _null_sink_module()[0]
        subprocess.run(["pactl", "unload-module", module], check=True)
        _alsa_mics(tmp_path, desk_mic)
        time.sleep(5.0)  # attempts fail while it is away; the other microphone is not interrupted meanwhile
        assert not usb.source.up and other.source.reconnects == 0 and not other.gaps()
        _alsa_mics(tmp_path, ("Another Card Mic (hw 0,0)", "audioclip_desk.monitor"),
                   ("USB Mic Audio (hw 2,0)", f"{sink}.monitor"), desk_mic)
        back = time.monotonic()
        _load_null_sink(arguments)
        usb.wait_for(lambda: usb.blocks(after=back), 15, "audio from the microphone back under another name")
        played = time.monotonic()
        subprocess.run(["paplay", f"--device={sink}", str(_tone(tmp_path))], check=True, timeout=20)
        usb.wait_for(lambda: any(np.abs(b.samples).max() > 0.1 for b in usb.blocks(after=played)), 5,
                     "the tone played into the replugged microphone's sink")
        heard = time.monotonic()
        other.wait_for(lambda: other.blocks(after=heard), 5, "the other microphone delivering again")
        second = {d.name: d.index for d in devices.list_input_devices()}["USB Mic Audio (hw 2,0)"]
    finally:
        usb.close()
        other.close()
        subprocess.run(["pactl", "unload-module", desk], check=False)
        monkeypatch.undo()
        devices.restart_portaudio("the test's devices are gone")
    now = {d.name: d.index for d in devices.list_input_devices()}
    assert usb_mic[0] not in now and "USB Mic Audio (hw 2,0)" not in now  # the real ~/.asoundrc again
    assert usb.source.reconnects == 1 and other.source.reconnects == 1 and len(other.gaps()) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert second != first
    assert f"input device {usb_mic[0]!r} is back as 'USB Mic Audio (hw 2,0)' (index {second}, was {first})" in messages
    assert sum("PortAudio restarted" in m and "1 other input stream(s) reopen" in m for m in messages) == 1


def _tone(folder) -> object:
    path = folder / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * np.arange(22050) / 44100), 44100, subtype="PCM_16")
    return path
