"""The monitor's web pages in a real browser (issue 24): Debian's Chromium, headless, driven by Playwright, against
a running monitor that streams three of the shared clips in a loop, in real time, with the golden checkpoint and
its HTTP server on (with a token).

One monitor and one browser for the module (the slow tests); they run in order against them: the live bars move,
a label added through the form is scored within two windows and kept in monitor.toml, an event's clip plays and a
review survives a reload, a streamed clip finds its own moment first, a write without the token fails, a browser
beyond loopback asks for the token once and then gets everything, thresholds proposed from the stored moments are
shown and one applied, the live page fits a phone. One fast test reads
the pages' files: nothing from the network. With ``AUDIOCLIP_SCREENSHOTS=docs/img`` the slow tests also write the
pages' screenshots there (docs/web.md).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from audioclip.model.constants import SAMPLE_RATE

from helpers import require, require_module, wait_until

STATIC = Path(__file__).resolve().parents[1] / "audioclip" / "monitor" / "web" / "static"
PAGES = {"live": "/", "events": "/events", "labels": "/labels", "search": "/search", "api": "/docs"}

CHROMIUM = Path("/usr/bin/chromium")
CLIPS = ("cat_3-95694-A-5.wav", "thunder_3-144891-B-19.wav", "car_horn_1-24074-A-43.wav")  # 5 s each, in this order
CLIP_SECONDS = 5.0
LOOP_SECONDS = CLIP_SECONDS * len(CLIPS)
HOP = 1.01769  # 4 x 4488 samples: overlapping windows share their front end
TOKEN = "browser-test-token"
NEW_LABEL = "glass breaking"
SCREENSHOTS = os.environ.get("AUDIOCLIP_SCREENSHOTS")  # a folder: write the pages' screenshots there

# On this loop the golden checkpoint scores cat near 0.83 throughout (kept out of events by its threshold),
# the others between 0.55 and 0.70: events of a few seconds that end, so that their clips are written.
MONITOR_TOML = """\
# the browser test's monitor (tests/test_web_browser.py)
[model]
checkpoint = "{checkpoint}"
threads = 1

[defaults]
window = 5.0
hop = {hop}
threshold = 0.65
hysteresis = 0.03

[[labels]]
name = "cat"
threshold = 0.9  # near 0.83 all along the loop: no event

[[labels]]
name = "thunder"
threshold = 0.62

[[labels]]
name = "car horn"

[[labels]]
name = "alarm clock"

[[sources]]
name = "porch"
file = "{wav}"
loop = true

[store]
db = "{db}"
clips = "{clips}"
pre_roll = 0.5
post_roll = 0.5

[http]
listen = "127.0.0.1:0"
token = "{token}"
"""

# Records, on the live page, the bars of each window as drawn: [[label, probability], ...] per window.
RECORD_WINDOWS = """() => {
  window.windowsSeen = [];
  const card = document.querySelector('article.card[data-source="porch"]');
  const bars = () => [...card.querySelectorAll("ol.bars li")].map((li) => [li.dataset.label, Number(li.dataset.p),
                                                                          li.querySelector(".fill").style.width]);
  new MutationObserver(() => window.windowsSeen.push(bars()))
    .observe(card.querySelector(".window"), { childList: true, characterData: true, subtree: true });
}"""


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def serve(app, host: str):
    """``app`` on uvicorn on a free port of ``host``, on a thread: (server, thread, base URL)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    wait_until(lambda: server.started, 10, f"a server on {host}")
    return server, thread, f"http://{host}:{sock.getsockname()[1]}"


def address_beyond_loopback() -> str | None:
    """An IPv4 address of this machine beyond loopback, if it has one: a browser that connects to it is not a
    loopback client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent; the kernel picks the source address
            address = probe.getsockname()[0]
        except OSError:  # no route
            return None
    return None if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0" else address


def screenshot(page, name: str) -> None:
    """With ``AUDIOCLIP_SCREENSHOTS`` set, the whole page as ``web-<name>.png`` there, in 256 colours (half the bytes
    for the repository, no visible loss on these flat pages)."""
    if SCREENSHOTS:
        from PIL import Image

        path = Path(SCREENSHOTS) / f"web-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the sticky bar of pages at the top of the whole page
        image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        image.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def test_the_pages_need_nothing_from_the_network_and_share_one_bar():
    """Each page loads only the package's own files (no CDN, no build step: it works offline), fits a phone's
    screen, and links the pages in the same bar, its own marked."""
    for name, path in PAGES.items():
        html = (STATIC / f"{name}.html").read_text()
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html, name
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert ref.startswith(("/", "data:")) and not ref.startswith("//"), f"{name}.html loads {ref}"
            if ref.startswith("/static/"):
                assert (STATIC / ref.removeprefix("/static/")).is_file(), f"{name}.html: {ref} is not in the package"
        bar = re.search(r'<nav class="top".*?</nav>', html, re.S).group(0)
        assert re.findall(r'href="([^"]+)"', bar) == list(PAGES.values()), name
        assert re.findall(r'href="([^"]+)" aria-current="page"', bar) == [path], name
    for file in STATIC.iterdir():
        text = file.read_text()
        assert not re.search(r"https?://|@import|url\(", text), f"{file.name} reaches for the network"


@pytest.fixture(scope="module")
def site(tmp_path_factory, golden_dir, clips_dir):
    """The running monitor (``site.monitor``, its ``site.url``, ``site.toml``) and a browser (``site.browser``)."""
    require(CHROMIUM.exists(), f"Debian's chromium at {CHROMIUM}")
    sync_api = require_module("playwright.sync_api", "Playwright for Python drives the browser")
    from audioclip.monitor.config import load_config
    from audioclip.monitor.output import JsonlOutput
    from audioclip.monitor.service import Monitor

    tmp = tmp_path_factory.mktemp("web")
    loop = np.concatenate([sf.read(clips_dir / name, dtype="float32")[0] for name in CLIPS])
    assert len(loop) == LOOP_SECONDS * SAMPLE_RATE
    sf.write(tmp / "loop.wav", loop, SAMPLE_RATE, subtype="FLOAT")
    toml = tmp / "monitor.toml"
    toml.write_text(MONITOR_TOML.format(checkpoint=golden_dir / "checkpoint.pt", hop=HOP, wav=tmp / "loop.wav",
                                        db=tmp / "events.sqlite", clips=tmp / "clips", token=TOKEN))
    monitor = Monitor(load_config(toml), output=JsonlOutput(io.StringIO()), config_path=str(toml))
    thread = threading.Thread(target=monitor.run, name="monitor")
    thread.start()
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        wait_until(lambda: monitor.web is not None or not thread.is_alive(), 60, "the monitor's web server")
        assert thread.is_alive(), "the monitor stopped"
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        yield SimpleNamespace(monitor=monitor, url=monitor.web.url, toml=toml, browser=browser, context=context,
                              live=context.new_page(), clips_dir=clips_dir)
        browser.close()
    finally:
        playwright.stop()
        monitor.stop()
        thread.join(30)
    assert not thread.is_alive()


def stream_seconds(site) -> float:
    """How far the monitor has classified the stream (the end of its last window)."""
    last = get_json(f"{site.url}/api/sources")[0]["last"]
    return 0.0 if last is None else last["t_end"]


@pytest.mark.slow
def test_the_live_page_bars_change_from_window_to_window(site):
    page = site.live
    page.goto(site.url + "/")
    page.wait_for_selector('article.card[data-source="porch"]')
    page.evaluate(RECORD_WINDOWS)
    page.wait_for_function("window.windowsSeen.length >= 3", timeout=20_000)
    seen = page.evaluate("window.windowsSeen")
    for window in seen:
        assert {label for label, _, _ in window} == {"cat", "thunder", "car horn", "alarm clock"}
        probs = [p for _, p, _ in window]
        assert probs == sorted(probs, reverse=True)  # best first
        for _, p, width in window:  # the bar is as long as the score
            assert float(width.removesuffix("%")) == pytest.approx(100 * p, abs=0.051)
    for before, after in zip(seen, seen[1:]):
        assert dict((label, p) for label, p, _ in before) != dict((label, p) for label, p, _ in after)
    assert page.text_content(".card .state") == "up"
    assert page.text_content(".card .level .value").endswith("dBFS")
    page.wait_for_function("document.querySelector('.card img.spectrogram').naturalWidth > 0", timeout=10_000)
    page.wait_for_function("Number(document.querySelector('.counters dd').textContent) >= 3")  # windows, polled


@pytest.mark.slow
def test_a_label_added_through_the_form_is_scored_within_two_windows_and_kept_in_monitor_toml(site):
    import tomlkit

    labels = site.context.new_page()
    labels.goto(site.url + "/labels")
    labels.wait_for_selector('#labels tr[data-name="alarm clock"]')
    labels.fill("input[name=name]", NEW_LABEL)
    labels.fill("textarea[name=prompts]", "glass breaking\na window shattering")
    labels.fill("input[name=threshold]", "0.8")
    labels.click("#save")
    # a write needs the token: the page asks for it once and keeps it
    labels.wait_for_selector("#token-dialog[open]")
    labels.fill("#token-dialog input", TOKEN)
    labels.click("#token-dialog button[value=ok]")
    labels.wait_for_selector(f'#labels tr[data-name="{NEW_LABEL}"]', timeout=20_000)
    answered = site.live.evaluate("window.windowsSeen.length")  # windows the live page drew before the answer
    assert labels.evaluate("localStorage.getItem('audioclip-token')") == TOKEN
    row = labels.text_content(f'#labels tr[data-name="{NEW_LABEL}"]')
    assert "a window shattering" in row and "0.8" in row

    drawn = f"window.windowsSeen.slice({answered}).some((w) => w.some(([l]) => l === {NEW_LABEL!r}))"
    site.live.wait_for_function(drawn, timeout=15_000)
    seen = site.live.evaluate("window.windowsSeen")
    first = next(i for i, w in enumerate(seen) if i >= answered and any(label == NEW_LABEL for label, _, _ in w))
    assert first - answered <= 1, f"the new label was first drawn {first - answered + 1} windows after the answer"

    kept = tomlkit.parse(site.toml.read_text())
    (label,) = [x for x in kept["labels"] if x["name"] == NEW_LABEL]
    assert list(label["prompts"]) == ["glass breaking", "a window shattering"] and label["threshold"] == 0.8
    assert site.toml.read_text().startswith("# the browser test's monitor")  # the file's comments kept
    labels.close()


@pytest.mark.slow
def test_an_event_row_plays_its_clip_and_a_wrong_mark_survives_a_reload(site):
    def with_clip():
        return [e for e in get_json(f"{site.url}/api/events?limit=200")["events"] if e["clip_url"]]

    wait_until(with_clip, 40, "an event with its clip written")
    event = with_clip()[0]
    page = site.context.new_page()
    page.goto(site.url + "/events")
    row = f'#events tr[data-id="{event["id"]}"]'
    page.wait_for_selector(row)
    page.wait_for_function(f"document.querySelector('{row} audio').duration > 0", timeout=10_000)
    duration = page.evaluate(f"document.querySelector('{row} audio').duration")
    assert duration == pytest.approx(event["end_s"] - event["start_s"] + 1.0, abs=0.6)  # pre- and post-roll 0.5 s
    page.wait_for_function(f"document.querySelector('{row} img.spectrogram').naturalWidth > 0", timeout=10_000)

    page.click(f"{row} button.mark-wrong")
    page.wait_for_selector(f'{row}[data-review="wrong"]')
    page.reload()
    page.wait_for_selector(row)
    assert page.get_attribute(row, "data-review") == "wrong"
    assert page.text_content(f"{row} .review") == "wrong"
    assert page.get_attribute(f"{row} button.mark-wrong", "aria-pressed") == "true"

    page.select_option("select[name=review]", "wrong")  # the filter: only what was marked wrong
    page.click("#filters button.primary")
    page.wait_for_function("new URLSearchParams(location.search).get('review') === 'wrong'")
    page.wait_for_function("document.querySelectorAll('#events tbody tr').length === 1")
    assert page.get_attribute("#events tbody tr", "data-id") == str(event["id"])
    with page.expect_download() as download:  # the CSV of the filtered rows (fetched with the token)
        page.click("#csv")
    lines = Path(download.value.path()).read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"{event['id']},"), lines
    page.goto(site.url + "/events")
    page.wait_for_selector(row)
    screenshot(page, "events")
    page.close()


@pytest.mark.slow
def test_searching_with_a_streamed_clip_finds_a_moment_of_it_first(site):
    # a moment of every clip of the loop is stored once the stream has passed its end
    wait_until(lambda: stream_seconds(site) > LOOP_SECONDS + 1, 40, "the stream past the loop's end",
               lambda: stream_seconds(site))
    page = site.context.new_page()
    page.goto(site.url + "/search")
    query = 1  # the thunder clip, heard at [5, 10) s of every loop
    page.set_input_files("input[name=file]", str(site.clips_dir / CLIPS[query]))
    page.select_option("select[name=k]", "50")  # every stored moment so far
    page.click("#search-form button.primary")
    page.wait_for_selector("#hits li, #message.error", timeout=20_000)
    assert not page.text_content("#message"), page.text_content("#message")
    hits = page.eval_on_selector_all("#hits li", "(items) => items.map((li) => ({...li.dataset}))")
    now = stream_seconds(site)

    def clip_heard(moment) -> int:
        """The clip of the loop that a moment's window is mostly of."""
        return int((float(moment["tStart"]) + float(moment["tEnd"])) / 2 % LOOP_SECONDS // CLIP_SECONDS)

    def holds(event, clip: int) -> bool:
        """Whether an event's span (to now while open) holds at least half of one playing of ``clip``."""
        start, end = float(event["tStart"]), float(event.get("tEnd", now))
        starts = (n * LOOP_SECONDS + clip * CLIP_SECONDS for n in range(int(end // LOOP_SECONDS) + 1))
        return any(min(end, a + CLIP_SECONDS) - max(start, a) >= CLIP_SECONDS / 2 for a in starts)

    moments = [(rank, hit) for rank, hit in enumerate(hits) if hit["kind"] == "moment"]
    assert {clip_heard(hit) for _, hit in moments} == {0, 1, 2}, hits  # moments of every clip to choose from
    rank, best = moments[0]
    assert clip_heard(best) == query, hits  # the best moment is one of the streamed clip
    assert rank == 0 or holds(hits[0], query), hits  # and above it only an event that holds that clip
    assert CLIPS[query] in page.text_content("#query")
    if best.get("offset") is not None:  # it plays from the moment, inside the event clip that holds it
        player = page.locator("#hits li").nth(rank).locator("audio")
        page.wait_for_function("(audio) => audio.readyState >= 1", arg=player.element_handle(), timeout=10_000)
        assert player.evaluate("(audio) => audio.currentTime") == pytest.approx(float(best["offset"]))
    screenshot(page, "search")

    page.fill("input[name=q]", "thunder")  # a description: the file is cleared, the text searched
    page.click("#search-form button.primary")
    page.wait_for_function("document.querySelector('#query').textContent.includes('“thunder”')")
    assert page.locator("#hits li").count() > 0
    page.close()


@pytest.mark.slow
def test_a_write_without_the_token_fails_from_another_address(site):
    """A second server over the same monitor on 127.0.0.2: a fresh browser (no token kept) cannot add a label."""
    from audioclip.monitor.web.app import create_app

    server, thread, url = serve(create_app(site.monitor, token=TOKEN), "127.0.0.2")
    context = site.browser.new_context()
    try:
        page = context.new_page()
        page.goto(url + "/labels")
        page.wait_for_selector('#labels tr[data-name="cat"]')  # reading from this machine needs no token
        page.fill("input[name=name]", "siren")
        page.click("#save")
        page.wait_for_selector("#token-dialog[open]")
        page.click("#token-dialog button[value=cancel]")  # no token given
        page.wait_for_function("document.querySelector('#form-error').textContent !== ''")
        assert "token" in page.text_content("#form-error")
        assert "siren" not in [x["name"] for x in get_json(f"{site.url}/api/labels")]
        assert "siren" not in site.toml.read_text()
        status = page.evaluate("""(token) => fetch('/api/labels/cat', {method: 'DELETE',
                                      headers: {Authorization: 'Bearer ' + token}}).then((r) => r.status)""",
                               "not-" + TOKEN)
        assert status == 401 and "cat" in [x["name"] for x in get_json(f"{site.url}/api/labels")]
    finally:
        context.close()
        server.should_exit = True
        thread.join(5)


@pytest.mark.slow
def test_from_beyond_loopback_the_page_asks_for_the_token_once_then_streams_and_plays(site):
    """Served on this machine's own network address: every request needs the token, the page asks once and sends
    it with its API calls, the live stream and its clips and images."""
    from audioclip.monitor.web.app import create_app

    address = address_beyond_loopback()
    if address is None:
        pytest.skip("this machine has no address beyond loopback to serve on")
    web = site.monitor.web  # the monitor's live news and spectrograms go to this server's pages too
    server, thread, url = serve(create_app(site.monitor, hub=web.hub, watch=web.watch, token=TOKEN), address)
    context = site.browser.new_context()
    try:
        page = context.new_page()
        assert page.goto(url + "/api/sources").status == 401  # a read from beyond loopback
        page.goto(url + "/")
        page.wait_for_selector("#token-dialog[open]")
        page.fill("#token-dialog input", TOKEN)
        page.click("#token-dialog button[value=ok]")
        page.wait_for_selector(f'.card li[data-label="{NEW_LABEL}"]', timeout=15_000)  # windows, from the stream
        page.wait_for_function("document.querySelector('.card img.spectrogram').naturalWidth > 0", timeout=10_000)
        page.goto(url + "/events")
        page.wait_for_selector("#events audio")
        page.wait_for_function("document.querySelector('#events audio').duration > 0", timeout=10_000)
        page.wait_for_function("document.querySelector('#events img.spectrogram').naturalWidth > 0", timeout=10_000)
        assert page.locator("#token-dialog[open]").count() == 0  # asked once
    finally:
        context.close()
        server.should_exit = True
        thread.join(5)


@pytest.mark.slow
def test_proposed_thresholds_for_every_label_and_one_applied_in_the_table_and_monitor_toml(site):
    """"Propose thresholds" on the labels page: a row per label with the current and proposed thresholds as the
    server computed them on the stored moments, the history's hours and the warning that a few minutes mean little;
    a bad target shows the server's message; "Apply" on one label sets its threshold in both tables and in
    monitor.toml; the proposals fit a phone."""
    import tomlkit

    page = site.context.new_page()  # with the token the form's test kept
    page.goto(site.url + "/labels")
    page.wait_for_selector('#labels tr[data-name="alarm clock"]')
    page.fill("#calibration-form input[name=alarms_per_hour]", "0")
    page.click("#propose")
    page.wait_for_function("document.querySelector('#calibration-error').textContent !== ''")
    assert "greater than 0" in page.text_content("#calibration-error") and page.is_hidden("#proposals")

    page.fill("#calibration-form input[name=alarms_per_hour]", "1")
    with page.expect_response(lambda r: "/api/labels/calibration?" in r.url) as response:
        page.click("#propose")
    answer = response.value.json()
    page.wait_for_selector("#proposals tbody tr")
    assert 0 < answer["hours"] * 3600 <= stream_seconds(site) + 5  # one moment every 5 s of the stream so far
    assert page.get_attribute("#history", "data-hours") == str(answer["hours"])
    assert f"{answer['hours']:.2f} source-hours" in page.text_content("#history")
    assert "under 6" in page.text_content("#calibration-warning") and page.is_visible("#calibration-warning")
    rows = page.eval_on_selector_all("#proposals tbody tr", """(rows) => rows.map((r) => [r.dataset.name,
        r.querySelector('.current').textContent, r.querySelector('.proposed').textContent])""")
    assert rows == [[p["label"], str(p["current"]), str(p["threshold"])] for p in answer["proposals"]]
    assert [name for name, _, _ in rows] == [x["name"] for x in get_json(f"{site.url}/api/labels")]
    (chosen,) = [p for p in answer["proposals"] if p["label"] == "alarm clock"]
    assert chosen["current"] == 0.65 and chosen["threshold"] != chosen["current"]  # [defaults] threshold

    row = '#proposals tr[data-name="alarm clock"]'
    page.click(f"{row} button.apply")
    page.wait_for_function(f"document.querySelector('{row} .current').textContent === {str(chosen['threshold'])!r}")
    assert page.text_content(f"{row} button.apply") == "In use" and page.is_disabled(f"{row} button.apply")
    assert page.text_content('#labels tr[data-name="alarm clock"] td[data-th=threshold]') == str(chosen["threshold"])
    (kept,) = [x for x in tomlkit.parse(site.toml.read_text())["labels"] if x["name"] == "alarm clock"]
    assert kept["threshold"] == chosen["threshold"]
    assert page.text_content("#calibration-error") == ""
    screenshot(page, "labels")  # with the label added, a review counted and the proposals

    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator(f"{row} button.apply").bounding_box()["height"] >= 44  # a finger's target
    page.close()


@pytest.mark.slow
def test_the_live_page_on_a_phone(site):
    """The live page at a phone's width: one column, every bar on screen (and its screenshot)."""
    page = site.browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(site.url + "/")
    page.wait_for_selector(f'.card li[data-label="{NEW_LABEL}"]', timeout=15_000)
    page.wait_for_function("document.querySelector('.card img.spectrogram').naturalWidth > 0", timeout=10_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    for selector in ("nav.top a", ".card"):
        box = page.locator(selector).first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert page.locator("nav.top a").first.bounding_box()["height"] >= 44  # a finger's target
    screenshot(page, "live-phone")
    page.close()
    screenshot(site.live, "live")


@pytest.mark.slow
def test_the_api_page_shows_the_served_openapi_on_a_phone_and_asks_nothing_elsewhere(site):
    """/docs at a phone's width: a card for each method of each path of the monitor's own /openapi.json, GET
    /api/events with its parameters, and every request the page makes goes to the monitor."""
    spec = get_json(f"{site.url}/openapi.json")
    page = site.browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(site.url + "/docs")
        events = page.locator('article.operation[data-method="GET"][data-path="/api/events"]')
        events.locator('tr[data-name="limit"]').wait_for()
        shown = page.locator("article.operation").evaluate_all(
            "(ops) => ops.map((o) => [o.dataset.method, o.dataset.path])")
        assert sorted(shown) == sorted([method.upper(), path] for path, item in spec["paths"].items()
                                       for method in item)
        get_events = spec["paths"]["/api/events"]["get"]
        assert events.locator(".summary").text_content() == get_events["summary"]
        rows = events.locator("tr[data-name]").evaluate_all(
            "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))")
        assert [row[0] for row in rows] == [p["name"] for p in get_events["parameters"]]
        assert rows[5] == ["limit", "query", "no", "integer", "default 50; ≥ 1; ≤ 10000"]
        assert rows[4][3] == "one of correct, wrong, unreviewed | null"
        review = page.locator('article.operation[data-method="PATCH"][data-path="/api/events/{event_id}"]')
        assert "Body_review_api_events__event_id__patch" in review.locator(".request").text_content()
        assert "HTTPValidationError" in review.locator(".responses").text_content()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        page.close()
    assert f"{site.url}/openapi.json" in requests
    assert all(url.startswith(site.url + "/") for url in requests), requests
