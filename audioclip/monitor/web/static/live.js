// The live page: a card per source, updated from the server-sent events of /api/live.
"use strict";

const TOP_BARS = 6; // labels shown per card until "all labels" is pressed
const LEVEL_FLOOR_DB = -90; // the level bar's left end
const COUNTERS = ["windows", "dropped", "gated", "overflows", "events", "reconnects"];
const cards = new Map(); // source name -> card

function makeCard(source) {
  const card = {
    probs: {}, // the last window's scores
    expanded: false,
    bars: new Map(), // label -> <li>
    state: source.state,
    retryAt: null, // Date.now() of the next reconnection attempt
  };
  card.stateBadge = el("span", { class: "state" });
  card.window = el("span", { class: "window" });
  card.levelBar = el("span", { class: "fill" });
  card.levelText = el("span", { class: "value" });
  card.list = el("ol", { class: "bars", "aria-label": `scores of ${source.name}` });
  card.toggle = el("button", { type: "button", class: "link", onclick: () => { card.expanded = !card.expanded; drawBars(card); } });
  card.spectrogram = el("img", { class: "spectrogram", alt: `the last 10 s of ${source.name} as the model hears them (dB spectrogram)`, hidden: true });
  card.spectrogram.addEventListener("load", () => { card.spectrogram.hidden = false; });
  card.counters = new Map(COUNTERS.map((c) => [c, el("dd", { text: "0" })]));
  card.lastEvent = el("p", { class: "last-event", text: "no detection yet" });
  card.root = el("article", { class: "card", "data-source": source.name },
    el("header", {}, el("h2", { text: source.name }), card.stateBadge),
    el("div", { class: "level", title: "input level (RMS of the last window)" },
      el("span", { class: "caption", text: "level" }), el("span", { class: "meter" }, card.levelBar), card.levelText),
    el("div", { class: "scores" }, card.window, card.list, card.toggle),
    card.spectrogram,
    el("dl", { class: "counters" }, ...COUNTERS.flatMap((c) => [el("dt", { text: c }), card.counters.get(c)])),
    card.lastEvent);
  return card;
}

function drawState(card) {
  const badge = card.stateBadge;
  badge.className = `state state-${card.state}`;
  if (card.state === "reconnecting" && card.retryAt !== null) {
    const left = Math.max(0, Math.ceil((card.retryAt - Date.now()) / 1000));
    badge.textContent = `reconnecting in ${left} s`;
  } else {
    badge.textContent = card.state;
  }
}

function setState(card, state, retryInS) {
  card.state = state;
  card.retryAt = retryInS === null || retryInS === undefined ? null : Date.now() + retryInS * 1000;
  drawState(card);
}

function drawWindow(card, w) {
  card.probs = w.probs;
  card.window.textContent = `window ${w.t_start.toFixed(1)}–${w.t_end.toFixed(1)} s · top: ${w.top}`;
  if (w.level_db !== null && w.level_db !== undefined) {
    const fraction = Math.min(1, Math.max(0, (w.level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB));
    card.levelBar.style.width = `${(100 * fraction).toFixed(1)}%`;
    card.levelText.textContent = `${w.level_db.toFixed(1)} dBFS`;
  }
  drawBars(card);
}

// The labels by score, best first: the top TOP_BARS, or all of them.
function drawBars(card) {
  const ranked = Object.entries(card.probs).sort((a, b) => b[1] - a[1]);
  const shown = card.expanded ? ranked : ranked.slice(0, TOP_BARS);
  const items = shown.map(([label, p], rank) => {
    let item = card.bars.get(label);
    if (!item) {
      item = el("li", { "data-label": label },
        el("span", { class: "name", text: label }), el("span", { class: "bar" }, el("span", { class: "fill" })),
        el("span", { class: "value" }));
      card.bars.set(label, item);
    }
    item.dataset.p = String(p);
    item.classList.toggle("top", rank === 0);
    item.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    item.querySelector(".value").textContent = p.toFixed(2);
    return item;
  });
  for (const label of [...card.bars.keys()]) {
    if (!(label in card.probs)) card.bars.delete(label); // a removed label
  }
  card.list.replaceChildren(...items);
  card.toggle.hidden = ranked.length <= TOP_BARS;
  card.toggle.textContent = card.expanded ? `top ${TOP_BARS} only` : `all ${ranked.length} labels`;
}

function drawCounters(card, counters) {
  for (const [name, cell] of card.counters) {
    if (counters && name in counters) cell.textContent = String(counters[name]);
  }
}

function drawEvent(card, e) {
  if (!e) return;
  const link = el("a", { href: `/events?source=${encodeURIComponent(e.source)}&label=${encodeURIComponent(e.label)}`, text: e.label });
  const when = e.end_utc ? `${localTime(e.start_utc)}, ${seconds(e.end_s - e.start_s)}` : `since ${localTime(e.start_utc)}`;
  card.lastEvent.replaceChildren("last detection: ", link, ` · peak ${Number(e.peak).toFixed(2)} · ${when}`);
  card.lastEvent.classList.toggle("open", !e.end_utc);
}

async function refresh() {
  const sources = await api("/api/sources");
  const container = document.getElementById("cards");
  const names = new Set(sources.map((s) => s.name));
  for (const name of [...cards.keys()]) {
    if (!names.has(name)) { cards.get(name).root.remove(); cards.delete(name); }
  }
  for (const source of sources) {
    let card = cards.get(source.name);
    if (!card) {
      card = makeCard(source);
      cards.set(source.name, card);
      container.append(card.root);
      if (source.last) drawWindow(card, source.last);
      drawEvent(card, source.last_event);
    }
    setState(card, source.state, source.retry_in_s);
    drawCounters(card, source.counters);
  }
  say(sources.length ? "" : "no sources are running", "info");
}

function connected(yes) {
  const line = document.getElementById("connection");
  line.textContent = yes ? "live" : "reconnecting to the monitor…";
  line.classList.toggle("lost", !yes);
}

function cardOf(name) {
  const found = cards.get(name);
  if (!found) reported(refresh()); // a source the page has not met yet (a reload added it)
  return found;
}

function start() {
  reported(refresh().then(() => {
    openLive({
      open: () => connected(true),
      error: () => connected(false),
      window: (w) => {
        const c = cardOf(w.source);
        if (!c) return;
        drawWindow(c, w);
        if (c.state !== "up") setState(c, "up", null);
      },
      state: (s) => { const c = cardOf(s.source); if (c) setState(c, s.state, s.retry_in_s); },
      event: (e) => { const c = cardOf(e.source); if (c) drawEvent(c, e); },
      spectrogram: (s) => { const c = cardOf(s.source); if (c) c.spectrogram.src = withToken(s.png); },
      // a label change needs nothing here: the next window's scores carry the new set of labels
    });
  }));
  setInterval(() => reported(refresh()), 3000); // states and counters
  setInterval(() => cards.forEach(drawState), 1000);
}

start();
