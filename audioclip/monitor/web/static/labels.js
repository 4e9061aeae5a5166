// The labels page: the monitor's labels with their settings and counts; add, edit and remove them.
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

form.addEventListener("submit", (e) => {
  e.preventDefault();
  save();
});
document.getElementById("cancel").addEventListener("click", reset);
reported(load());
