// The events page: the detections, filtered and paged, each with its clip, its spectrogram and a review.
// The filters live in the address (?source=&label=&since=&until=&review=&limit=&offset=), so a reload or
// a shared link shows the same rows.
"use strict";

const FILTERS = ["source", "label", "since", "until", "review"];
const CSV_ROWS = 10000; // the most rows the API gives at once: the CSV holds every filtered row up to this
const form = document.getElementById("filters");
const rows = document.querySelector("#events tbody");

function params() {
  return new URLSearchParams(location.search);
}

function query(p, extra = {}) {
  const q = new URLSearchParams();
  for (const name of FILTERS) if (p.get(name)) q.set(name, p.get(name));
  for (const [name, value] of Object.entries(extra)) q.set(name, value);
  return q.toString();
}

function limit(p) {
  return Number(p.get("limit")) || 50;
}

function offset(p) {
  return Math.max(0, Number(p.get("offset")) || 0);
}

async function fillForm(p) {
  form.since.value = toLocalInput(p.get("since"));
  form.until.value = toLocalInput(p.get("until"));
  form.review.value = p.get("review") || "";
  form.limit.value = String(limit(p));
  await fillSourceSelect(form.source, p.get("source"));
  const labels = (await api("/api/labels")).map((l) => l.name);
  const selected = p.get("label");
  if (selected && !labels.includes(selected)) labels.push(selected); // a label removed since
  form.label.replaceChildren(el("option", { value: "", text: "any label" }), ...labels.map((n) => el("option", { value: n, text: n })));
  form.label.value = selected || "";
}

function reviewCell(event) {
  const state = el("span", { class: `review review-${event.review || "none"}`, text: event.review || "not reviewed" });
  const button = (value, text, title) => el("button", {
    type: "button", class: `mark mark-${value || "clear"}`, title, "data-review": value || "",
    "aria-pressed": String((event.review || "") === (value || "")),
    onclick: () => reported(review(event.id, value)),
  }, text);
  return el("td", { class: "review-cell", "data-th": "review" }, el("div", {}, state,
    el("div", { class: "buttons" },
      button("correct", "✓ correct", "the label is right"),
      button("wrong", "✗ wrong", "the label is wrong"),
      event.review ? button(null, "clear", "not reviewed") : null)));
}

// A clip is written once the audio after an event's end is there: for a minute after, it may still come.
function clipPending(event) {
  return Date.now() - Date.parse(event.end_utc) < 60000;
}

function row(event) {
  const open = !event.end_utc;
  const span = open ? "open" : seconds(event.end_s - event.start_s);
  const clip = event.clip_url
    ? el("audio", { controls: true, preload: "metadata", src: withToken(event.clip_url) })
    : el("span", { class: "muted", text: open ? "after it ends" : clipPending(event) ? "being written" : "no clip" });
  const spectrogram = event.spectrogram_url
    ? el("img", { class: "spectrogram", loading: "lazy", src: withToken(event.spectrogram_url), alt: `spectrogram of event ${event.id}`,
                  onclick: (e) => e.target.classList.toggle("large") })
    : null;
  return el("tr", { "data-id": event.id, "data-review": event.review || "" },
    el("td", { "data-th": "time", class: "time" }, el("span", {}, localTime(event.start_utc), el("small", { class: "muted", text: span }))),
    el("td", { "data-th": "source", text: event.source }),
    el("td", { "data-th": "label", class: "label", text: event.label }),
    el("td", { "data-th": "peak", text: Number(event.peak).toFixed(2) }),
    el("td", { "data-th": "clip", class: "clip" }, clip),
    el("td", { "data-th": "spectrogram" }, spectrogram),
    reviewCell(event));
}

async function review(id, value) {
  const event = await api(`/api/events/${id}`, { method: "PATCH", json: { review: value } });
  const old = rows.querySelector(`tr[data-id="${id}"]`);
  if (old) old.replaceWith(row(event));
}

async function load() {
  const p = params();
  const answer = await api(`/api/events?${query(p, { limit: limit(p), offset: offset(p) })}`);
  const total = answer.total;
  rows.replaceChildren(...answer.events.map(row));
  const first = answer.events.length ? offset(p) + 1 : 0;
  document.getElementById("range").textContent = `${first}–${offset(p) + answer.events.length} of ${total}`;
  document.getElementById("previous").disabled = offset(p) === 0;
  document.getElementById("next").disabled = offset(p) + answer.events.length >= total;
  document.getElementById("csv").href = `/api/events?${query(p, { format: "csv", limit: CSV_ROWS })}`;
  say(total ? "" : "no events match", "info");
}

function go(changes) {
  const p = params();
  for (const [name, value] of Object.entries(changes)) {
    if (value === "" || value === null) p.delete(name);
    else p.set(name, value);
  }
  history.pushState(null, "", `${location.pathname}?${p}`);
  return reported(load());
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  go({
    source: form.source.value, label: form.label.value, review: form.review.value,
    since: fromLocalInput(form.since.value), until: fromLocalInput(form.until.value),
    limit: form.limit.value, offset: "",
  });
});
document.getElementById("previous").addEventListener("click", () => go({ offset: Math.max(0, offset(params()) - limit(params())) || "" }));
document.getElementById("next").addEventListener("click", () => go({ offset: offset(params()) + limit(params()) }));

// With a token the download goes through fetch (a plain link cannot send the header).
document.getElementById("csv").addEventListener("click", (e) => {
  if (!storedToken()) return;
  e.preventDefault();
  reported(request(e.currentTarget.getAttribute("href")).then(async (response) => {
    const url = URL.createObjectURL(await response.blob());
    el("a", { href: url, download: "events.csv" }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }));
});

window.addEventListener("popstate", () => reported(fillForm(params()).then(load)));
reported(fillForm(params()).then(load));
