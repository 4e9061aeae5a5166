// What the pages share: the access token, the JSON API, the live stream, small DOM helpers.
// Plain JavaScript loaded with <script defer>: no framework, no build step, nothing from the network.
"use strict";

const TOKEN_KEY = "audioclip-token";
let tokenPrompt = null; // one question at a time, however many requests were refused together
let tokenDeclined = false; // cancelled: not asked again until the page is loaded again

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function storedToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

// Asks for the token in a small dialog; resolves to it ("" when the user cancels) and keeps it.
function askToken() {
  if (tokenDeclined) return Promise.resolve("");
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog") || makeTokenDialog();
      const input = dialog.querySelector("input");
      input.value = "";
      dialog.addEventListener("close", () => {
        const value = dialog.returnValue === "ok" ? input.value.trim() : "";
        if (value) localStorage.setItem(TOKEN_KEY, value);
        else tokenDeclined = true;
        tokenPrompt = null;
        resolve(value);
      }, { once: true });
      dialog.showModal();
    });
  }
  return tokenPrompt;
}

function makeTokenDialog() {
  const dialog = el("dialog", { id: "token-dialog" });
  dialog.innerHTML = `<form method="dialog">
      <h2>Access token</h2>
      <p>This monitor asks for its token (<code>[http] token</code> in monitor.toml, <code>--http-token</code>
      or <code>AUDIOCLIP_HTTP_TOKEN</code>). The page keeps it in this browser.</p>
      <input type="password" name="token" aria-label="token" autocomplete="current-password">
      <div class="buttons"><button value="ok" class="primary">Use token</button><button value="cancel">Cancel</button></div>
    </form>`;
  document.body.append(dialog);
  return dialog;
}

// A request with the token. A 401 asks for the token once and tries again; other failures throw an
// ApiError carrying the server's one-line message.
async function request(path, { method = "GET", json, body } = {}) {
  const headers = {};
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  for (let attempt = 0; ; attempt++) {
    const token = storedToken();
    const response = await fetch(path, { method, body, headers: token ? { ...headers, Authorization: `Bearer ${token}` } : headers });
    if (response.status === 401 && attempt === 0) {
      if (token) localStorage.removeItem(TOKEN_KEY);
      if (await askToken()) continue;
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response;
  }
}

async function api(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

async function errorMessage(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON: the status line says it
  }
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) { // FastAPI's validation list
    const first = detail[0];
    return `${(first.loc || []).filter((p) => p !== "body").join(".")}: ${first.msg}`;
  }
  if (response.status === 401) return "the token was refused: reload the page to enter it again";
  return `${response.status} ${response.statusText || "error"}`;
}

// An upload (multipart) with its progress: onProgress(fraction) while sending, onProgress(null) once
// sent (the server is working). Resolves to the answer's JSON.
function upload(path, form, onProgress) {
  const send = (token) => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.upload.onload = () => onProgress(null);
    xhr.onload = () => resolve(xhr);
    xhr.onerror = () => reject(new ApiError(0, "the upload failed: the server is not answering"));
    xhr.send(form);
  });
  const parse = (xhr) => {
    let answer = null;
    try {
      answer = JSON.parse(xhr.responseText);
    } catch {
      // not JSON: the status says it
    }
    if (xhr.status >= 200 && xhr.status < 300) return answer;
    const detail = answer && answer.detail;
    throw new ApiError(xhr.status, typeof detail === "string" ? detail : `${xhr.status} ${xhr.statusText || "error"}`);
  };
  return send(storedToken()).then(async (xhr) => {
    if (xhr.status !== 401) return parse(xhr);
    localStorage.removeItem(TOKEN_KEY);
    const token = await askToken();
    return parse(token ? await send(token) : xhr);
  });
}

// A URL the browser fetches by itself (audio, image, download link, EventSource) cannot carry a header:
// the token goes in the query.
function withToken(url) {
  const token = storedToken();
  if (!url || !token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

// The monitor's server-sent events: handlers[type](message) for each message. A stream the server
// refused (401) is checked with an ordinary request, which asks for the token, and opened again.
function openLive(handlers) {
  let stream = null;
  const open = () => {
    stream = new EventSource(withToken("/api/live"));
    stream.onopen = () => handlers.open && handlers.open();
    stream.onmessage = (e) => {
      const message = JSON.parse(e.data);
      const handler = handlers[message.type];
      if (handler) handler(message);
    };
    stream.onerror = () => {
      if (handlers.error) handlers.error();
      if (stream.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      // refused: an ordinary request finds out why (and asks for the token where that is it)
      setTimeout(() => api("/api/sources").then(open, (e) => (e.status === 401 ? say(e.message) : open())), 3000);
    };
  };
  open();
  return () => stream.close();
}

// el("a", {href: "/", class: "x"}, "text", child): a new element.
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// "2026-12-07T20:29:45.311Z" -> "2026-12-07 21:29:45" in the browser's time zone.
function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// ISO UTC <-> the value of an <input type="datetime-local"> (local time, to the minute).
function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : "";
}

function seconds(s) {
  return s === null || s === undefined ? "" : `${Number(s).toFixed(1)} s`;
}

// A one-line message in the page's status line (role="status"); "" clears it.
function say(text, kind = "error") {
  const line = document.getElementById("message");
  if (!line) return;
  line.textContent = text;
  line.className = text ? kind : "";
}

// A promise's failure shown in the status line instead of lost in the console.
function reported(promise) {
  return promise.catch((e) => say(e.message || String(e)));
}

// The source names for a <select>, with an "any" first entry; keeps the selected value.
async function fillSourceSelect(select, selected) {
  const sources = await api("/api/sources");
  const names = sources.map((s) => s.name);
  if (selected && !names.includes(selected)) names.push(selected);
  select.replaceChildren(el("option", { value: "", text: "any source" }), ...names.map((n) => el("option", { value: n, text: n })));
  select.value = selected || "";
}
