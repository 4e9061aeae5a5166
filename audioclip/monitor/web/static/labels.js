// The labels page: the monitor's labels with their settings and counts; add, edit and remove them, and set
// their thresholds from the site's own audio (the proposals of GET /api/labels/calibration).
"use strict";

const NUMBERS = ["threshold", "hysteresis", "min_windows"];
const form = document.getElementById("label-form");
const table = document.querySelector("#labels tbody");
let editing = null; // the label being edited, or null when the form adds one

function number(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function wrongShare(label) {
  if (label.wrong_share === null || label.wrong_share === undefined) return label.reviewed ? "–" : "none reviewed";
  return `${Math.round(100 * label.wrong_share)}% of ${label.reviewed}`;
}

function row(label) {
  const flags = [label.event === false ? "no events" : "events", label.privacy ? "privacy" : null].filter(Boolean);
  return el("tr", { "data-name": label.name },
    el("td", { "data-th": "name", class: "name", text: label.name }),
    el("td", { "data-th": "prompts" }, el("ul", { class: "prompts" }, ...(label.prompts || []).map((p) => el("li", { text: p })))),
    el("td", { "data-th": "threshold", text: number(label.threshold) }),
    el("td", { "data-th": "hysteresis", text: number(label.hysteresis) }),
    el("td", { "data-th": "min windows", text: number(label.min_windows) }),
    el("td", { "data-th": "flags" }, el("span", {}, ...flags.map((f) => el("span", { class: `flag flag-${f.replace(" ", "-")}`, text: f })))),
    el("td", { "data-th": "events 24 h" },
      el("a", { href: `/events?label=${encodeURIComponent(label.name)}`, text: String(label.events_24h ?? 0) })),
    el("td", { "data-th": "marked wrong", text: wrongShare(label) }),
    el("td", { class: "actions" },
      el("button", { type: "button", onclick: () => edit(label) }, "Edit"),
      el("button", { type: "button", class: "danger", onclick: () => reported(remove(label.name)) }, "Remove")));
}

async function load() {
  const labels = await api("/api/labels");
  table.replaceChildren(...labels.map(row));
  say(labels.length ? "" : "no labels: add one below", "info");
}

function edit(label) {
  editing = label;
  form.name.value = label.name;
  form.name.readOnly = true;
  form.prompts.value = (label.prompts || []).join("\n");
  for (const name of NUMBERS) form[name].value = label[name] ?? "";
  form.event.checked = label.event !== false;
  form.privacy.checked = Boolean(label.privacy);
  document.getElementById("form-title").textContent = `Edit “${label.name}”`;
  document.getElementById("save").textContent = "Save";
  document.getElementById("cancel").hidden = false;
  document.getElementById("form-error").textContent = "";
  form.scrollIntoView({ behavior: "smooth" });
  form.prompts.focus();
}

function reset() {
  editing = null;
  form.reset();
  form.name.readOnly = false;
  document.getElementById("form-title").textContent = "Add a label";
  document.getElementById("save").textContent = "Add";
  document.getElementById("cancel").hidden = true;
}

// The form's fields as the API takes them. Adding: what is filled in. Editing: what changed, a cleared
// number as null (back to [defaults]).
function fields() {
  const prompts = form.prompts.value.split("\n").map((p) => p.trim()).filter(Boolean);
  const body = { prompts: prompts.length ? prompts : [form.name.value.trim()], event: form.event.checked, privacy: form.privacy.checked };
  for (const name of NUMBERS) {
    const text = form[name].value.trim();
    if (text !== "") body[name] = Number(text);
    else if (editing && editing[name] !== null && editing[name] !== undefined) body[name] = null;
  }
  if (!editing) return { name: form.name.value.trim(), ...body };
  for (const name of Object.keys(body)) {
    if (JSON.stringify(body[name]) === JSON.stringify(editing[name])) delete body[name];
  }
  return body;
}

async function save() {
  const error = document.getElementById("form-error");
  const busy = document.getElementById("busy");
  const button = document.getElementById("save");
  error.textContent = "";
  busy.hidden = false;
  button.disabled = true;
  try {
    if (editing) {
      await api(`/api/labels/${encodeURIComponent(editing.name)}`, { method: "PATCH", json: fields() });
    } else {
      await api("/api/labels", { method: "POST", json: fields() });
    }
    reset();
    await load();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    busy.hidden = true;
    button.disabled = false;
  }
}

async function remove(name) {
  if (!confirm(`Remove the label “${name}”? The monitor stops listening for it and monitor.toml loses it; its events stay.`)) return;
  await api(`/api/labels/${encodeURIComponent(name)}`, { method: "DELETE" });
  if (editing && editing.name === name) reset();
  await load();
}

// Thresholds from the site's own audio: the proposals for the form's target, applied one label at a time with
// PATCH /api/labels/{name} (the server writes monitor.toml), then asked for again to show what changed.
const calibration = document.getElementById("calibration-form");
const proposalsBody = document.querySelector("#proposals tbody");
let asked = ""; // the query of the proposals shown
let shown = null; // the answer shown

function perHour(value) {
  return `${Number(Number(value).toFixed(2))} /h`;
}

function historySize(hours) {
  const short = hours * 60 < 1 ? `${Math.round(hours * 3600)} s` : `${Math.round(hours * 60)} min`;
  return `${hours.toFixed(2)} source-hours${hours < 1 ? ` (${short})` : ""}`;
}

function reviewsUsed(p) {
  const parts = [];
  if (p.correct) parts.push(`${p.correct} marked correct (${p.kept} still fire)`);
  if (p.wrong) parts.push(`${p.wrong} marked wrong`);
  return parts.length ? parts.join(", ") : "none";
}

function proposalRow(p) {
  const inUse = p.threshold === p.current;
  return el("tr", { "data-name": p.label },
    el("td", { "data-th": "label", class: "name", text: p.label }),
    el("td", { "data-th": "current", class: "current", text: String(p.current) }),
    el("td", { "data-th": "current alarms", class: "current-alarms", text: perHour(p.current_alarms_per_hour) }),
    el("td", { "data-th": "proposed", class: "proposed", text: String(p.threshold) }),
    el("td", { "data-th": "proposed alarms", class: "proposed-alarms", text: perHour(p.alarms_per_hour) }),
    el("td", { "data-th": "reviews used", class: "reviews" },
      el("div", {}, el("span", { text: reviewsUsed(p) }), p.note ? el("small", { class: "note", text: p.note }) : null)),
    el("td", { class: "actions" },
      el("button", { type: "button", class: "apply", disabled: inUse, title: inUse ? "the current threshold" : null,
                     onclick: (e) => applying([p], e.currentTarget) }, inUse ? "In use" : "Apply")));
}

function showProposals() {
  const box = document.getElementById("proposals");
  box.hidden = !shown;
  if (!shown) return;
  const warning = document.getElementById("calibration-warning");
  warning.textContent = shown.warning || "";
  warning.hidden = !shown.warning;
  const size = document.getElementById("history");
  size.dataset.hours = shown.hours;
  size.textContent = `On ${historySize(shown.hours)} of stored moments, for at most ${shown.alarms_per_hour} false ` +
    "alarm(s) per hour";
  proposalsBody.replaceChildren(...shown.proposals.map(proposalRow));
  document.getElementById("apply-all").disabled = !shown.proposals.some((p) => p.threshold !== p.current);
}

async function fetchProposals() {
  shown = await api(`/api/labels/calibration?${asked}`);
}

// Runs job() with the progress shown and the buttons off; its failure is the server's one-line message.
async function working(what, job) {
  const busy = document.getElementById("calibrating");
  const error = document.getElementById("calibration-error");
  busy.querySelector(".what").textContent = what;
  busy.hidden = false;
  error.textContent = "";
  for (const button of document.querySelectorAll("#calibration button")) button.disabled = true;
  try {
    await job();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    busy.hidden = true;
    document.getElementById("propose").disabled = false;
    showProposals(); // the rows' buttons as the answer says
  }
}

function propose() {
  const query = new URLSearchParams({ alarms_per_hour: calibration.alarms_per_hour.value.trim() });
  const since = fromLocalInput(calibration.since.value);
  if (since) query.set("since", since);
  asked = query.toString();
  return working("scoring the stored moments…", async () => {
    shown = null;
    await fetchProposals();
  });
}

// Writes each proposal's threshold, then shows both tables again (also after a failure: what was written).
function applying(proposals, button) {
  if (button) button.textContent = "Applying…";
  const what = proposals.length === 1 ? `setting ${proposals[0].label}'s threshold…` : `setting ${proposals.length} thresholds…`;
  return working(what, async () => {
    let failure = null;
    try {
      for (const p of proposals) {
        await api(`/api/labels/${encodeURIComponent(p.label)}`, { method: "PATCH", json: { threshold: p.threshold } });
      }
    } catch (e) {
      failure = e;
    }
    await Promise.all([load(), fetchProposals()]);
    if (failure) throw failure;
  });
}

calibration.addEventListener("submit", (e) => {
  e.preventDefault();
  propose();
});
document.getElementById("apply-all").addEventListener("click", () => {
  const changed = shown.proposals.filter((p) => p.threshold !== p.current);
  if (confirm(`Set the proposed thresholds of ${changed.length} label(s) in monitor.toml?`)) applying(changed, null);
});

form.addEventListener("submit", (e) => {
  e.preventDefault();
  save();
});
document.getElementById("cancel").addEventListener("click", reset);
reported(load());
