"""The monitor's HTTP API against a real monitor: a tiny model scoring a looped file of noise bursts, its
SQLite file and clips, its monitor.toml, served by its own uvicorn on 127.0.0.1; clients from 127.0.0.1 and,
for a page beyond this machine, from 127.0.0.2."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclip.monitor.config import ConfigError, MonitorConfig, with_http
from audioclip.monitor.service import Monitor

from helpers import burst_wav, require_module, wait_until
from servers import Receiver, free_port

httpx = require_module("httpx", "the web API tests talk HTTP with httpx")
require_module("fastapi", "the web API needs the web extra")
PIL = require_module("PIL.Image", "spectrograms are drawn with Pillow")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOML = """# the porch monitor (a comment the web page must keep)
[model]
checkpoint = "{checkpoint}"

[defaults]
window = 1.0
hop = 0.5
threshold = 0.05
hysteresis = 0.02
min_dbfs = -60.0

# what we listen for
[[labels]]
name = "cat"
prompts = ["cat", "meowing cat"]  # two prompts, averaged

[[labels]]
name = "rain"

[[sources]]
name = "porch"
file = "{wav}"
loop = true

[store]
db = "{db}"
clips = "{clips}"
pre_roll = 0.5
post_roll = 0.5

[metrics]
listen = "127.0.0.1:0"

[[webhooks]]
url = "{hook}"

[http]
listen = "127.0.0.1:0"
token = "{token}"
public_url = "http://nas.local:8080/"
upload_max_mb = 1
"""


class Served:
    """A running monitor with its web server: ``url``, ``monitor``, paths, and clients."""

    def __init__(self, monitor: Monitor, thread: threading.Thread, root: Path, receiver: Receiver):
        self.monitor, self.thread, self.root, self.receiver = monitor, thread, root, receiver
        self.url = monitor.web.url
        self.toml = root / "monitor.toml"

    def client(self, address: str = "127.0.0.1", **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(local_address=address), timeout=30, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("web")
    wav = burst_wav(root / "bursts.wav", pattern=((1.0, 0.0), (2.0, 0.3), (1.5, 0.0)))
    receiver = Receiver()
    toml = root / "monitor.toml"
    toml.write_text(TOML.format(checkpoint=tiny_checkpoint, wav=wav, db=root / "d.sqlite", clips=root / "clips",
                                hook=receiver.url, token=TOKEN))
    from audioclip.monitor.config import load_config

    monitor = Monitor(load_config(toml), config_path=str(toml))
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    wait_until(lambda: monitor.web is not None and monitor.pipelines, 30, "the web server")
    yield Served(monitor, thread, root, receiver)
    monitor.stop()
    thread.join(20)
    receiver.close()
    assert not thread.is_alive()


def first_event_with_clip(served: Served, timeout: float = 20.0) -> dict:
    found = {}

    def clip_written():
        with served.client() as c:
            events = c.get("/api/events", params={"source": "porch"}).json()["events"]
        found.update(next((e for e in events if e["clip_url"]), {}))
        return bool(found)

    wait_until(clip_written, timeout, "an event with its clip")
    return found


def server_logs(caplog) -> str:
    """What the monitor and its web server logged (not the test's own HTTP client)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("audioclip", "uvicorn"))


class LiveReader:
    """An SSE client on a thread: the messages it received, each with the time it arrived."""

    def __init__(self, url: str, address: str = "127.0.0.1", headers=None):
        self.messages: list[tuple[float, dict]] = []
        self.status = None
        self._stop = threading.Event()
        self._client = httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=None)
        self._thread = threading.Thread(target=self._read, args=(url, headers or {}), daemon=True)
        self._thread.start()

    def _read(self, url, headers):
        with self._client.stream("GET", url, headers=headers) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    self.messages.append((time.time(), json.loads(line[6:])))

    def of(self, kind: str) -> list[dict]:
        return [m for _, m in self.messages if m["type"] == kind]

    def close(self):
        self._stop.set()
        self._client.close()


# -- configuration -------------------------------------------------------------------------------

def test_a_bind_beyond_loopback_needs_a_token(tmp_path, tiny_checkpoint):
    d = {"labels": ["cat"], "sources": [{"name": "a", "file": "x.wav"}], "http": {"listen": "0.0.0.0:8080"}}
    config = MonitorConfig.from_dict(d)
    with pytest.raises(ConfigError) as e:
        with_http(config, environ={})
    assert str(e.value) == ("monitor.toml: http.listen: 0.0.0.0:8080 is reachable beyond this machine: set a token "
                            "([http] token, --http-token or AUDIOCLIP_HTTP_TOKEN) or listen on 127.0.0.1")
    assert with_http(config, environ={"AUDIOCLIP_HTTP_TOKEN": "t"}).http.token == "t"
    assert with_http(config, token="u", environ={}).http.token == "u"
    assert "t0ken" not in repr(with_http(config, token="t0ken", environ={}))  # never shown
    assert with_http(config, "127.0.0.2:0", environ={}).http.listen == "127.0.0.2:0"  # loopback range: no token
    with pytest.raises(ConfigError, match="--http: must be host:port"):
        with_http(config, "8080", environ={})
    for http, expected in (({"cors": "x"}, "http.cors: must be a list of origins"),
                           ({"upload_max_mb": 0}, "http.upload_max_mb: must be above 0"),
                           ({"public_url": "nas.local"}, "http.public_url: unsupported"),
                           ({"lsten": "1"}, "http.lsten: unknown key")):
        with pytest.raises(ConfigError, match=expected):
            MonitorConfig.from_dict({**d, "http": http})


def test_the_cli_refuses_a_bind_beyond_loopback_without_a_token_in_one_line(tmp_path, tiny_checkpoint, monkeypatch):
    from typer.testing import CliRunner

    from audioclip.stream.cli import app

    monkeypatch.delenv("AUDIOCLIP_HTTP_TOKEN", raising=False)
    config = tmp_path / "m.toml"
    config.write_text(f'labels = ["cat"]\n[model]\ncheckpoint = "{tiny_checkpoint}"\n'
                      f'[[sources]]\nname = "a"\nfile = "{burst_wav(tmp_path / "a.wav")}"\n')
    result = CliRunner().invoke(app, ["--config", str(config), "--http", "0.0.0.0:0"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "--http: 0.0.0.0:0 is reachable beyond this machine" in result.output


def test_a_port_in_use_stops_the_start_in_one_line(tmp_path, tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = MonitorConfig.from_dict({
            "model": {"checkpoint": str(tiny_checkpoint)}, "labels": ["cat"], "http": {"listen": f"127.0.0.1:{port}"},
            "sources": [{"name": "a", "file": str(burst_wav(tmp_path / "a.wav")), "realtime": False}]})
        monitor = Monitor(config)
        with pytest.raises(OSError, match=rf"^http.listen: cannot listen on 127.0.0.1:{port}: Address already in use$"):
            monitor.run()
    assert monitor.pipelines == []  # refused before any source started


def test_cors_is_off_unless_origins_are_named():
    from audioclip.monitor.web.app import create_app

    preflight = {"Origin": "http://nas.local", "Access-Control-Request-Method": "PATCH"}

    async def ask(app, headers):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            return await client.options("/api/labels/cat", headers=headers)

    closed, open_ = create_app(None), create_app(None, cors=("http://nas.local",))
    assert "access-control-allow-origin" not in asyncio.run(ask(closed, preflight)).headers
    r = asyncio.run(ask(open_, preflight))
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://nas.local"
    other = asyncio.run(ask(open_, {**preflight, "Origin": "http://evil.example"}))
    assert "access-control-allow-origin" not in other.headers


def test_docs_is_a_page_of_the_package_over_openapi_json():
    """/docs shows /openapi.json with the package's own script and style (FastAPI's Swagger page would load its
    own from a CDN), and needs no token from a client beyond loopback. In process, as httpx's ASGI client
    (Starlette's TestClient warns that its httpx use is deprecated)."""
    from audioclip.monitor.web.app import create_app

    async def ask(paths):
        transport = httpx.ASGITransport(app=create_app(None, token=TOKEN), client=("192.0.2.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://nas.local") as client:
            return {path: await client.get(path) for path in paths}

    docs = asyncio.run(ask(["/docs"]))["/docs"]
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]*)"', docs.text)
    assert {"/static/style.css", "/static/app.js", "/static/api.js", "/openapi.json"} <= set(refs)
    assert all(ref.startswith(("/", "data:")) and not ref.startswith("//") for ref in refs), refs
    assert not re.search(r"https?://|cdn|swagger", docs.text, re.I)
    answers = asyncio.run(ask([*(ref for ref in refs if ref.startswith("/static/")), "/api/sources"]))
    assert answers.pop("/api/sources").status_code == 401  # a client beyond loopback indeed
    for ref, asset in answers.items():
        assert asset.status_code == 200 and not re.search(r"https?://|cdn", asset.text, re.I), ref
    spec = asyncio.run(ask(["/openapi.json"]))["/openapi.json"]
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/api/sources", "/api/live", "/api/events", "/api/events/{event_id}", "/api/labels/{name}",
            "/api/search", "/healthz"} <= set(paths)
    assert [p["name"] for p in paths["/api/events"]["get"]["parameters"]] == [
        "source", "label", "since", "until", "review", "limit", "offset", "format"]
    assert not {"/docs", "/redoc", "/"} & set(paths)  # the pages are not API


def test_a_prompt_too_long_for_the_text_encoder_is_refused_naming_it():
    d = {"labels": [{"name": "x", "prompts": ["fine", "word " * 80]}], "sources": [{"name": "a", "file": "x.wav"}]}
    with pytest.raises(ConfigError, match=r"labels\[0\]\.prompts\[1\]: is 82 tokens with the template, longer than "
                                          "the text encoder's 77; shorten it"):
        MonitorConfig.from_dict(d)


# -- sources, live, health -----------------------------------------------------------------------------

def test_sources_health_metrics_and_docs(served):
    wait_until(lambda: served.monitor.pipelines[0].last is not None, 15, "a classified window")
    with served.client() as c:
        (source,) = c.get("/api/sources").json()
        assert source["name"] == "porch" and source["labels"] == ["cat", "rain"]
        assert source["state"] in ("up", "gated") and source["retry_in_s"] is None
        assert set(source["counters"]) == {"windows", "dropped", "gated", "overflows", "events", "reconnects"}
        assert source["counters"]["windows"] > 0 and set(source["last"]["probs"]) == {"cat", "rain"}
        health = c.get("/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True, "sources": {"porch": source["state"]}}
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and 'audioclip_windows_total{source="porch"}' in metrics.text
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/api/events/{event_id}/clip", "/api/labels/{name}", "/api/search", "/api/live"} <= set(paths)
        for page in ("/", "/events", "/labels", "/search"):
            r = c.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


def test_a_web_server_that_stopped_by_itself_serves_again_on_the_same_address(served, caplog):
    """uvicorn ending on its own (as a fault in it would) is noticed by the monitor's housekeeping, logged once, and
    the page served again on the same port; the monitor never stopped listening meanwhile."""
    web = served.monitor.web
    windows = served.monitor.pipelines[0].windows
    old = web._thread
    web._server.should_exit = True  # the server's loop ends; the monitor did not ask for it
    old.join(10)
    assert not old.is_alive()
    wait_until(lambda: web._thread is not old and web._thread.is_alive(), 5, "the web server started again")

    def answers() -> bool:
        try:
            with served.client() as c:
                return c.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 10, "the page served again")
    assert served.url == web.url
    wait_until(lambda: served.monitor.pipelines[0].windows > windows, 10, "windows going on through it all")
    assert server_logs(caplog).count("the web server had stopped; serving") == 1


def test_live_stream_delivers_windows_states_labels_and_the_spectrogram(served, caplog):
    caplog.set_level(logging.DEBUG)
    reader = LiveReader(f"{served.url}/api/live")
    try:
        wait_until(lambda: len(reader.of("window")) >= 2 and reader.of("spectrogram"), 15, "windows and a spectrogram",
                   lambda: [m["type"] for _, m in reader.messages])
    finally:
        reader.close()
    assert reader.status == 200
    assert reader.of("state")[0]["source"] == "porch" and reader.of("labels")[0]["labels"] == ["cat", "rain"]
    window = reader.of("window")[0]
    assert set(window) >= {"source", "t_start", "t_end", "top", "probs", "level_db", "utc"}
    assert window["t_end"] - window["t_start"] == pytest.approx(1.0) and set(window["probs"]) == {"cat", "rain"}
    ends = [m["t_end"] for m in reader.of("window")]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # each window once, in order
    with served.client() as c:
        r = c.get(reader.of("spectrogram")[-1]["png"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = PIL.open(io.BytesIO(r.content))
    assert image.height == 341 and 0 < image.width <= 393  # 1023 bins / 3; at most 10 s of every other frame
    assert TOKEN not in server_logs(caplog)


@pytest.mark.slow
def test_a_stalled_page_never_holds_up_the_windows(served):
    """A page that stops reading (its socket never read) while another reads: the reader's windows keep coming
    at the stream's pace, each within a fraction of a second of its result."""
    stalled = socket.create_connection(("127.0.0.1", served.monitor.web.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /api/live HTTP/1.1\r\nHost: x\r\n\r\n")
    hub = served.monitor.web.hub
    wait_until(lambda: hub.listening >= 1, 5, "the stalled page's subscription")
    reader = LiveReader(f"{served.url}/api/live")
    try:
        start = time.time()
        wait_until(lambda: len(reader.of("window")) >= 3, 15, "three windows")
        for received, message in reader.messages:
            if message["type"] == "window":
                assert received - message["sent"] < 0.5, "a window reached the page late"
        seen = reader.of("window")
        stream_seconds = seen[-1]["t_end"] - seen[0]["t_end"]
        assert stream_seconds <= time.time() - start + 1.0  # paced: no backlog released at once
    finally:
        reader.close()
        stalled.close()


def test_a_full_page_queue_drops_for_that_page_only_and_publishing_never_waits():
    from audioclip.monitor.web.live import LiveHub

    hub = LiveHub()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        slow, fast = hub.subscribe(loop, size=8), hub.subscribe(loop, size=2000)
        start = time.perf_counter()
        for i in range(1000):
            hub.publish({"type": "window", "i": i})
        assert time.perf_counter() - start < 0.5
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), loop).result()
        assert (slow.queue.qsize(), slow.dropped) == (8, 992)
        assert (fast.queue.qsize(), fast.dropped) == (1000, 0)
        first = asyncio.run_coroutine_threadsafe(slow.next(1.0), loop).result()
        assert json.loads(first)["i"] == 0  # the oldest kept; the newest dropped while it was full
        hub.unsubscribe(slow)
        assert hub.listening == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)


def test_the_live_spectrogram_is_the_models_front_end_on_the_stream_and_starts_afresh_after_a_gap(tiny_model):
    """Streamed in blocks, the live dB frames are the model's own (``spectrogram_db``) on the same samples (every
    other frame and every third bin of them)."""
    import torch

    from audioclip.model.frames import frame_padding
    from audioclip.monitor.web.spectrogram import BINS, FrontEnd, LiveSpectrogram

    class Classifier:  # what the monitor's PyTorch classifier offers the front end: its model
        model = tiny_model

    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(3 * 44100)).astype(np.float32)
    live = LiveSpectrogram(FrontEnd(Classifier()), seconds=10.0)
    end = 0
    for size in (30000, 1, 50000, 23000, len(audio) - 103001):  # blocks of any length, as sources deliver
        live.tap(audio[end:end + size], (end + size) / 44100)
        end += size
        live.update()
    assert live.db.shape == (341, (len(audio) - 1654) // 1122 + 1)  # every other frame, every third bin
    # a window padded left by as many samples as it starts late has its frame i on audio[561 i : 561 i + 1654],
    # as the stream's frame i is
    shift = next(s for s in range(2000) if frame_padding(len(audio) - s)[0] == s)
    with torch.inference_mode():
        offline = tiny_model.audio.spectrogram_db(torch.from_numpy(audio[shift:])[None])[0].reshape(BINS, -1).numpy()
    offline = offline[::3, ::2]
    n = min(live.db.shape[1], offline.shape[1]) - 1  # the window's last frame is zero-padded
    np.testing.assert_allclose(live.db[:, 1:n], offline[:, 1:n], atol=1e-3)
    png = PIL.open(io.BytesIO(live.png()))
    assert png.size == (live.db.shape[1], 341)

    live.tap(audio[:44100], end / 44100 + 5.0)  # five seconds lost: what was shown goes
    live.update()
    assert live.db.shape[1] == (44100 - 1654) // 1122 + 1


def test_healthz_is_503_with_a_source_down_and_labels_need_a_config_file(tmp_path, tiny_checkpoint):
    port = free_port()  # nothing listens there: the camera is down
    config = MonitorConfig.from_dict({
        "model": {"checkpoint": str(tiny_checkpoint)}, "defaults": {"window": 1.0, "hop": 0.5},
        "labels": ["cat"], "http": {"listen": "127.0.0.1:0"},
        "sources": [{"name": "porch", "file": str(burst_wav(tmp_path / "a.wav")), "loop": True},
                    {"name": "cam", "url": f"http://127.0.0.1:{port}/audio"}]})
    monitor = Monitor(config)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: monitor.web is not None and len(monitor.pipelines) == 2, 30, "the web server")
        with httpx.Client(base_url=monitor.web.url, timeout=30) as c:
            def states():
                return c.get("/healthz").json()["sources"]

            # the file source is "reconnecting" (its first attempt) until its first block: healthy all the same
            wait_until(lambda: states().get("cam") == "down" and states().get("porch") in ("up", "gated"), 15,
                       "the camera down and the file up", states)
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json()["ok"] is False
            cam = next(s for s in c.get("/api/sources").json() if s["name"] == "cam")
            assert cam["state"] == "down" and cam["last"] is None
            r = c.post("/api/labels", json={"name": "dog", "prompts": ["dog"]})
            assert r.status_code == 409 and "--config" in r.json()["detail"] and "\n" not in r.json()["detail"]
            assert c.get("/api/events").status_code == 404  # no [store]: says how to turn it on
            assert "[store]" in c.get("/api/events").json()["detail"]
    finally:
        monitor.stop()
        thread.join(20)


# -- events ---------------------------------------------------------------------------------------

def test_events_filter_csv_review_clip_ranges_and_spectrogram(served):
    event = first_event_with_clip(served)
    with served.client() as c, served.client(headers=AUTH) as writer:
        listed = c.get("/api/events", params={"source": "porch", "label": event["label"], "limit": 1}).json()
        assert listed["total"] >= 1 and len(listed["events"]) == 1
        assert c.get("/api/events", params={"source": "elsewhere"}).json() == {"total": 0, "events": []}
        assert c.get("/api/events", params={"since": "yesterday"}).status_code == 422
        one = c.get(f"/api/events/{event['id']}").json()
        assert one["clip_url"] == f"/api/events/{event['id']}/clip" and one["review"] is None
        assert set(one) == {"id", "source", "label", "start_utc", "end_utc", "start_s", "end_s", "peak", "mean",
                            "review", "clip_url", "spectrogram_url"}

        r = writer.patch(f"/api/events/{event['id']}", json={"review": "wrong"})
        assert r.status_code == 200 and r.json()["review"] == "wrong"
        wrong = c.get("/api/events", params={"review": "wrong"}).json()["events"]
        assert [e["id"] for e in wrong] == [event["id"]]
        unreviewed = c.get("/api/events", params={"review": "unreviewed"}).json()["events"]
        assert event["id"] not in [e["id"] for e in unreviewed]
        assert writer.patch(f"/api/events/{event['id']}", json={"review": "maybe"}).status_code == 422
        assert writer.patch("/api/events/999999", json={"review": "correct"}).status_code == 404
        assert writer.patch(f"/api/events/{event['id']}", json={"review": None}).json()["review"] is None

        csv = c.get("/api/events", params={"source": "porch", "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        header, *rows = csv.text.splitlines()
        assert header == "id,source,label,start_utc,end_utc,start_s,end_s,peak,mean,review,clip_url"
        assert len(rows) == int(csv.headers["x-total-count"]) or len(rows) == 50

        whole = c.get(one["clip_url"])
        assert whole.status_code == 200 and whole.headers["content-type"] == "audio/flac"
        assert whole.headers["accept-ranges"] == "bytes"
        audio, rate = sf.read(io.BytesIO(whole.content))
        assert rate == 44100 and len(audio) > 0
        part = c.get(one["clip_url"], headers={"Range": "bytes=100-299"})
        assert part.status_code == 206 and part.content == whole.content[100:300]
        assert part.headers["content-range"] == f"bytes 100-299/{len(whole.content)}"
        assert c.get(one["clip_url"], headers={"Range": f"bytes={len(whole.content) + 10}-"}).status_code == 416

        png = c.get(one["spectrogram_url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert PIL.open(io.BytesIO(png.content)).height == 341
        cached = served.root / "clips.spectrograms" / f"{event['id']}.png"
        assert cached.read_bytes() == png.content
        assert c.get(one["spectrogram_url"]).content == png.content  # from the cache


def test_files_are_found_through_the_database_only(served):
    event = first_event_with_clip(served)
    outside = served.root / "secret.flac"
    sf.write(outside, np.zeros(4410, np.float32), 44100)
    with sqlite3.connect(served.root / "d.sqlite") as conn:  # a row edited by hand to point outside the clips
        forged = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] + 1000
        conn.execute("INSERT INTO events (id, source, label, start_utc, start_s, peak, mean, clip) "
                     "VALUES (?, 'porch', 'cat', '2026-01-01T00:00:00.000Z', 0, 0.5, 0.5, ?)", (forged, str(outside)))
    with served.client() as c:
        for path in ("/api/events/../../etc/passwd/clip", "/api/events/..%2F..%2Fetc%2Fpasswd/clip",
                     "/api/events/%2e%2e/clip", "/api/events/%2e%2e%2f%2e%2e%2fsecret.flac/clip",
                     "/api/events//etc/passwd/clip", f"/api/events/{outside}/clip",
                     "/api/events/-1/clip", f"/api/events/{event['id']}%2F..%2F..%2Fsecret.flac/clip",
                     "/api/events/1e3/spectrogram.png"):
            r = c.get(path)
            assert r.status_code in (404, 422), (path, r.status_code)
            assert b"RIFF" not in r.content and b"fLaC" not in r.content
        r = c.get(f"/api/events/{forged}/clip")
        assert r.status_code == 404 and c.get(f"/api/events/{forged}/spectrogram.png").status_code == 404
        assert c.get(f"/api/events/{forged}").json()["clip_url"] == f"/api/events/{forged}/clip"
    with sqlite3.connect(served.root / "d.sqlite") as conn:
        conn.execute("DELETE FROM events WHERE id = ?", (forged,))


def test_webhooks_carry_the_clip_url_under_the_public_url(served):
    event = first_event_with_clip(served)
    wait_until(lambda: served.receiver.requests, 10, "a webhook")
    bodies = [json.loads(body) for _, _, body in served.receiver.requests]
    mine = [b for b in bodies if b["id"] == event["id"]]
    assert mine and all(b["clip_url"] == f"http://nas.local:8080/api/events/{event['id']}/clip" for b in mine)


# -- who may do what -------------------------------------------------------------------------------

def test_token_beyond_loopback_and_for_every_write(served, caplog):
    caplog.set_level(logging.DEBUG)
    event = first_event_with_clip(served)
    with served.client() as local, served.client("127.0.0.2") as remote:
        assert local.get("/api/sources").status_code == 200  # a read from this machine
        r = local.patch(f"/api/events/{event['id']}", json={"review": "correct"})
        assert r.status_code == 401 and r.json()["detail"].startswith("this request needs the token")
        r = remote.get("/api/sources")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert remote.patch(f"/api/events/{event['id']}", json={"review": "correct"}).status_code == 401
        assert remote.get("/api/sources", headers={"Authorization": "Bearer wrong"}).json() == {"detail": "wrong token"}
        # ?token= is for what a browser loads by itself (stream, clip, images, CSV), and never for a write
        assert remote.get("/api/sources", params={"token": TOKEN}).status_code == 401
        assert remote.get(f"/api/events/{event['id']}/clip", params={"token": TOKEN}).status_code == 200
        assert remote.get(f"/api/events/{event['id']}/clip", params={"token": "wrong"}).status_code == 401
        assert remote.get("/api/events", params={"format": "csv", "token": TOKEN}).status_code == 200
        r = remote.patch(f"/api/events/{event['id']}", params={"token": TOKEN}, json={"review": "correct"})
        assert r.status_code == 401
        assert remote.get("/api/sources", headers=AUTH).status_code == 200
        r = remote.patch(f"/api/events/{event['id']}", json={"review": "correct"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["review"] == "correct"
        for public in ("/", "/events", "/docs", "/openapi.json"):  # the pages ask for the token themselves
            assert remote.get(public).status_code == 200, public
        assert remote.get("/healthz").status_code == 401 and remote.get("/metrics").status_code == 401
    reader = LiveReader(f"{served.url}/api/live?token={TOKEN}", address="127.0.0.2")
    refused = LiveReader(f"{served.url}/api/live", address="127.0.0.2")
    try:
        wait_until(lambda: reader.of("window") and refused.status is not None, 15, "the live stream from afar")
    finally:
        reader.close()
        refused.close()
    assert reader.status == 200 and refused.status == 401
    assert TOKEN not in server_logs(caplog)


# -- labels -----------------------------------------------------------------------------------------

def test_labels_added_changed_and_removed_while_it_runs_keep_monitor_toml(served):
    with served.client(headers=AUTH) as c:
        labels = c.get("/api/labels").json()
        assert [x["name"] for x in labels] == ["cat", "rain"]
        assert labels[0]["prompts"] == ["cat", "meowing cat"] and labels[0]["threshold"] == 0.05
        assert {"events_24h", "reviewed", "wrong_share"} <= set(labels[0])

        before = served.toml.read_text()
        for body, expected in (
                ({"name": "cat", "prompts": ["x"]}, "labels[2].name: 'cat' is given twice"),
                ({"name": "", "prompts": ["x"]}, "labels[2].name: must not be empty"),
                ({"name": "a/b", "prompts": ["x"]}, "cannot go into an MQTT topic"),
                ({"name": "long", "prompts": ["word " * 80]}, "longer than the text encoder's 77"),
                ({"name": "bad", "prompts": ["x"], "threshold": 1.5}, "labels[2].threshold"),
                ({"name": "bad", "prompts": []}, "labels[2].prompts: must be a non-empty list"),
                ({"name": "bad"}, "prompts: missing"),
                ({"name": "bad", "prompts": ["x"], "colour": "red"}, "unknown field 'colour'")):
            r = c.post("/api/labels", json=body)
            assert r.status_code == 422 and expected in r.json()["detail"], (body, r.json())
            assert "\n" not in r.json()["detail"]
        assert served.toml.read_text() == before  # nothing written

        r = c.post("/api/labels", json={"name": "glass", "prompts": ["glass breaking"], "threshold": 0.9})
        assert r.status_code == 201 and r.json()["name"] == "glass" and r.json()["threshold"] == 0.9
        text = served.toml.read_text()
        assert text.startswith(before.rstrip("\n")[:200]) and "# what we listen for" in text
        assert "# two prompts, averaged" in text and 'name = "glass"' in text
        assert MonitorConfig.from_dict(__import__("tomllib").loads(text)).label_names == ["cat", "rain", "glass"]

        def glass_scored():
            last = served.monitor.pipelines[0].last
            return last is not None and "glass" in last.labels

        # from the next classified window (the file's silences are gated: up to 2.5 s without one, and slack)
        wait_until(glass_scored, 10, "a window scored with the new label")
        assert [x["name"] for x in c.get("/api/labels").json()] == ["cat", "rain", "glass"]

        r = c.patch("/api/labels/glass", json={"threshold": 1.5})
        assert r.status_code == 422 and "labels[2].threshold" in r.json()["detail"]
        r = c.patch("/api/labels/glass", json={"threshold": 0.8, "prompts": ["glass breaking", "window shattering"]})
        assert r.status_code == 200 and r.json()["prompts"] == ["glass breaking", "window shattering"]
        assert "threshold = 0.8" in served.toml.read_text()
        assert c.patch("/api/labels/nothing", json={"threshold": 0.5}).status_code == 404
        assert c.patch("/api/labels/cat", json={"name": "kitten"}).status_code == 422

        wait_until(lambda: served.monitor.store_sink.store.moments()[1].shape[0] > 0, 20, "a stored moment")
        proposed = c.get("/api/labels/calibration", params={"alarms_per_hour": 2})
        assert proposed.status_code == 200, proposed.json()
        assert proposed.json()["hours"] > 0 and [p["label"] for p in proposed.json()["proposals"]] == \
            ["cat", "rain", "glass"]
        assert {"threshold", "alarms_per_hour", "current", "current_alarms_per_hour"} <= \
            set(proposed.json()["proposals"][0])
        assert proposed.json()["min_hours"] == 6 and "under 6" in proposed.json()["warning"]  # seconds of moments
        assert c.get("/api/labels/calibration", params={"alarms_per_hour": 0}).status_code == 422

        assert c.delete("/api/labels/glass").status_code == 204
        assert c.delete("/api/labels/glass").status_code == 404
        assert served.toml.read_text() == before  # back as it was, comments and layout included
        wait_until(lambda: "glass" not in served.monitor.labels, 10, "the label gone")


# -- search -----------------------------------------------------------------------------------------

def test_search_by_text_clip_and_image_with_upload_limits(served, clips_dir):
    first_event_with_clip(served)
    wait_until(lambda: served.monitor.store_sink.store.moments()[1].shape[0] > 0, 20, "a stored moment")
    with served.client() as c, served.client(headers=AUTH) as writer:
        r = c.get("/api/search", params={"q": "noise", "k": 3})
        assert r.status_code == 200, r.json()
        hits = r.json()["hits"]
        assert r.json()["query"] == "noise" and 0 < len(hits) <= 3
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert set(hits[0]) >= {"kind", "id", "source", "utc", "t_start", "t_end", "score", "label", "clip_url",
                                "clip_offset_s"}
        assert c.get("/api/search", params={"q": " "}).status_code == 422

        clip = (clips_dir / "cat_3-95694-A-5.wav").read_bytes()
        r = writer.post("/api/search", files={"file": ("cat.wav", clip)}, data={"k": "2"})
        assert r.status_code == 200 and r.json()["query"] == {"file": "cat.wav", "kind": "audio"}
        assert 0 < len(r.json()["hits"]) <= 2

        image = io.BytesIO()
        PIL.new("RGB", (80, 60), (200, 30, 30)).save(image, format="PNG")
        r = writer.post("/api/search", files={"file": ("red.png", image.getvalue())})
        assert r.status_code == 200 and r.json()["query"]["kind"] == "image"

        r = writer.post("/api/search", files={"file": ("notes.txt", b"just some text, not a sound")})
        assert r.status_code == 415 and "neither audio nor an image" in r.json()["detail"]
        r = writer.post("/api/search", files={"file": ("big.wav", b"\0" * 1_200_000)})  # upload_max_mb = 1
        assert r.status_code == 413 and "limit of 1 MB" in r.json()["detail"]
        bomb = io.BytesIO()
        PIL.new("L", (8000, 6000)).save(bomb, format="PNG")  # 48 megapixels in a small file
        r = writer.post("/api/search", files={"file": ("bomb.png", bomb.getvalue())})
        assert r.status_code == 413 and "megapixels" in r.json()["detail"]
        assert c.post("/api/search", files={"file": ("cat.wav", clip)}).status_code == 401  # a write needs the token
