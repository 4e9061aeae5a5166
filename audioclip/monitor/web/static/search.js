// The search page: a description, or an uploaded sound or picture, against the moments the monitor
// heard; each hit plays from its moment inside the event clip that holds it.
"use strict";

const form = document.getElementById("search-form");
const hits = document.getElementById("hits");

function busy(text, fraction) {
  const line = document.getElementById("busy");
  const bar = document.getElementById("progress");
  line.hidden = text === null;
  document.getElementById("busy-text").textContent = text || "";
  if (fraction === null || fraction === undefined) bar.removeAttribute("value"); // indeterminate
  else bar.value = fraction;
}

// A player that starts at the moment: once the clip's length is known, seek to clip_offset_s.
function player(hit) {
  const offset = Number(hit.clip_offset_s) || 0;
  const audio = el("audio", { controls: true, preload: "metadata", src: withToken(hit.clip_url), "data-offset": offset });
  audio.addEventListener("loadedmetadata", () => { audio.currentTime = Math.min(offset, audio.duration || offset); }, { once: true });
  const play = el("button", { type: "button", class: "play", onclick: () => { audio.currentTime = offset; audio.play(); } },
    `▶ from ${offset.toFixed(1)} s`);
  const box = el("div", { class: "player" }, audio, play);
  // an event still open, or its clip not yet written or deleted by retention: say so instead of a dead player
  audio.addEventListener("error", () => box.replaceWith(el("p", { class: "muted", text: "its clip is not there (yet)" })));
  return box;
}

function span(hit) {
  return hit.t_end === null || hit.t_end === undefined ? `from ${seconds(hit.t_start)}, still going,` : `${seconds(hit.t_start)}–${seconds(hit.t_end)}`;
}

function hitItem(hit, rank) {
  const what = hit.kind === "event" ? `event · ${hit.label}` : "moment";
  return el("li", { class: `hit hit-${hit.kind}`, "data-kind": hit.kind, "data-id": hit.id, "data-source": hit.source,
                    "data-t-start": hit.t_start, "data-t-end": hit.t_end, "data-offset": hit.clip_url ? hit.clip_offset_s : null },
    el("div", { class: "head" },
      el("span", { class: "rank", text: `${rank + 1}` }),
      el("span", { class: "score", title: "cosine similarity", text: Number(hit.score).toFixed(3) }),
      el("span", { class: `kind kind-${hit.kind}`, text: what })),
    el("p", { class: "where", text: `${hit.source} · ${localTime(hit.utc)} · ${span(hit)} of the stream` }),
    hit.clip_url ? player(hit) : el("p", { class: "muted", text: "no clip kept of this moment (clips are written around events)" }));
}

function show(answer) {
  const query = answer.query;
  const said = typeof query === "string" ? `“${query}”` : (query && (query.file || query.text || query.kind)) || "";
  document.getElementById("query").textContent = `${answer.hits.length} best matches${said ? ` for ${said}` : ""}`;
  hits.replaceChildren(...answer.hits.map(hitItem));
  say(answer.hits.length ? "" : "nothing stored matches yet: the monitor keeps a moment every few seconds", "info");
}

async function search() {
  const file = form.file.files[0];
  const text = form.q.value.trim();
  if (!file && !text) {
    say("type a description or choose a sound or a picture");
    return;
  }
  const options = { k: form.k.value, source: form.source.value, since: fromLocalInput(form.since.value) };
  const button = form.querySelector("button.primary");
  button.disabled = true;
  say("");
  try {
    if (file) {
      const body = new FormData();
      body.append("file", file);
      for (const [name, value] of Object.entries(options)) if (value) body.append(name, value);
      busy(`sending ${file.name}…`, 0);
      show(await upload("/api/search", body, (fraction) =>
        fraction === null ? busy("embedding and searching…", null) : busy(`sending ${file.name}…`, fraction)));
    } else {
      const q = new URLSearchParams({ q: text });
      for (const [name, value] of Object.entries(options)) if (value) q.set(name, value);
      busy("searching…", null);
      show(await api(`/api/search?${q}`));
    }
  } catch (e) {
    say(e.message);
  } finally {
    busy(null);
    button.disabled = false;
  }
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  search();
});
// A file chosen wins over the text; typing a description clears the file.
form.q.addEventListener("input", () => { if (form.q.value) form.file.value = ""; });
reported(fillSourceSelect(form.source, ""));
