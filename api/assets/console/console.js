// The operators' console: reads the public API (the ops views, documents, batches) every
// few seconds and acts through it (retry, cancel, redeliver), so every action is checked
// and audited like any other call. Tokens live in sessionStorage: this tab only.
"use strict";

const REFRESH_MS = 3000;
const API = "/api/v1";
const store = window.sessionStorage;

let timer = null;
let me = null;
// The token refresh under way, shared: a refresh token works once, and several calls
// meeting an expired access token at the same moment must not each spend it.
let refreshing = null;
// Documents retried or cancelled from this tab, newest first: {id, action}.
const acted = [];

// ---------------------------------------------------------------------------------------
// Talking to the API
// ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function call(path, options = {}, retried = false) {
  const headers = { Accept: "application/json" };
  const token = store.getItem("access_token");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    // A live view: never an answer from the browser's cache.
    cache: "no-store",
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401 && !retried && store.getItem("refresh_token")) {
    refreshing ??= refreshTokens().finally(() => { refreshing = null; });
    if (await refreshing) return call(path, options, true);
  }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.detail) || `HTTP ${response.status}`);
  }
  return body;
}

async function refreshTokens() {
  const response = await fetch(`${API}/auth/refresh`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: store.getItem("refresh_token") }),
  });
  if (!response.ok) return false;
  keepTokens(await response.json());
  return true;
}

function keepTokens(tokens) {
  store.setItem("access_token", tokens.access_token);
  store.setItem("refresh_token", tokens.refresh_token);
}

// ---------------------------------------------------------------------------------------
// Building the page (text always goes in as text, never as HTML)
// ---------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function fill(list, items, render, empty) {
  list.replaceChildren(...(items.length ? items.map(render) : [el("li", { class: "empty" }, empty)]));
}

// A status word with its colour: the word carries the meaning, the colour repeats it.
const TONE = {
  ready: "ok", succeeded: "ok", completed: "ok", live: "ok",
  queued: "idle", pending: "warn", processing: "warn", running: "warn", retrying: "warn",
  failed: "bad", stale: "bad", cancelled: "idle", stopped: "idle",
};

function status(word) {
  return el("span", { class: `status ${TONE[word] || "idle"}`, "data-status": word }, word);
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return duration(seconds) + " ago";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

const short = (id) => id.slice(0, 8) + "…" + id.slice(-4);

function button(label, testid, action) {
  const node = el("button", { type: "button", class: "secondary", "data-testid": testid }, label);
  node.addEventListener("click", async () => {
    node.disabled = true;
    try {
      await action();
      showRefusal(null);
    } catch (err) {
      showRefusal(`${label} refused: ${err.message}`);
    }
    await refresh();
    node.disabled = false;
  });
  return node;
}

// What the API said to the last action: stays until the next action.
function showRefusal(message) {
  const banner = $("refusal");
  banner.hidden = !message;
  banner.textContent = message || "";
}

function showProblem(message) {
  const banner = $("problem");
  banner.hidden = !message;
  banner.textContent = message || "";
}

// ---------------------------------------------------------------------------------------
// Panels
// ---------------------------------------------------------------------------------------

function renderQueue(queue) {
  $("lanes").replaceChildren(
    ...queue.lanes.map((lane) =>
      el("tr", { "data-lane": lane.lane },
        el("td", {}, lane.lane),
        el("td", { "data-testid": `queued-${lane.lane}` }, lane.queued),
        el("td", {}, duration(lane.oldest_queued_seconds)),
        el("td", {}, lane.in_flight))),
  );
  $("queue-summary").textContent =
    `${queue.queued} queued, ${queue.in_flight} in flight, ${queue.live_workers} live ` +
    `worker${queue.live_workers === 1 ? "" : "s"}; ${queue.failed_last_hour} failed in the last hour.`;
}

function renderChart(minutes) {
  const width = 300, height = 110, gap = 2, bottom = 14;
  const top = Math.max(1, ...minutes.map((m) => m.ready + m.failed));
  const barWidth = width / minutes.length - gap;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (name, attrs, text) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis" });
  minutes.forEach((m, i) => {
    const x = i * (barWidth + gap);
    const scale = (height - bottom - 4) / top;
    const readyH = m.ready * scale, failedH = m.failed * scale;
    const base = height - bottom;
    const label = `${new Date(m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ` +
      `${m.ready} ready, ${m.failed} failed`;
    add("rect", { x, y: base - readyH, width: barWidth, height: readyH, class: "ready" }).append(
      Object.assign(document.createElementNS("http://www.w3.org/2000/svg", "title"), { textContent: label }));
    add("rect", { x, y: base - readyH - failedH, width: barWidth, height: failedH, class: "failed" });
    if (i % 5 === 0 || i === minutes.length - 1) {
      const last = i === minutes.length - 1;
      add("text", { x: last ? width : x, y: height - 3, "text-anchor": last ? "end" : "start" },
        new Date(m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    }
  });
  $("chart").replaceChildren(svg);
  const ready = minutes.reduce((n, m) => n + m.ready, 0);
  const failed = minutes.reduce((n, m) => n + m.failed, 0);
  const last = minutes[minutes.length - 1] || { ready: 0, failed: 0 };
  const summary = `${ready} ready and ${failed} failed in 15 minutes; this minute ${last.ready} ready, ${last.failed} failed ` +
    `(green: ready, red: failed; peak ${top} a minute).`;
  $("chart").setAttribute("aria-label", summary);
  $("chart-summary").textContent = summary;
}

function renderWorkers(view) {
  const rows = [
    ...view.live.map((w) => [w, "live"]),
    ...view.stale.map((w) => [w, "stale"]),
    ...view.stopped.map((w) => [w, "stopped"]),
  ];
  fill($("workers"), rows, ([w, state]) =>
    el("li", { "data-worker": w.name },
      status(state),
      el("span", { class: "grow" },
        el("span", { class: "mono" }, w.name),
        el("span", { class: "detail" },
          `${w.in_flight}/${w.concurrency} in flight · ${w.processed} processed, ${w.failed} failed · seen ${ago(w.last_seen_at)}`))),
    "No worker has registered (the embedded mode renders in the API's own process).");
}

function renderFailures(queue) {
  $("failure-count").textContent = `(${queue.failed_last_hour} in the last hour)`;
  fill($("failures"), queue.recent_failures, (doc) =>
    el("li", { "data-document": doc.id },
      status("failed"),
      el("span", { class: "grow" },
        el("span", { class: "mono" }, short(doc.id)), ` ${doc.document_type} · ${doc.output_format}`,
        el("span", { class: "detail", "data-testid": "error" }, doc.error || "(no error recorded)"),
        el("span", { class: "detail" }, `${doc.attempts} attempt${doc.attempts === 1 ? "" : "s"} · ${ago(doc.finished_at)}`)),
      button("Retry", "retry", async () => {
        await call(`/documents/${doc.id}/retry`, { method: "POST" });
        remember(doc.id, "retried");
      })),
    "No failure in the last hour.");
}

function remember(id, action) {
  const at = acted.findIndex((a) => a.id === id);
  if (at >= 0) acted.splice(at, 1);
  acted.unshift({ id, action, doc: null });
  acted.length = Math.min(acted.length, 5);
}

// Where a document stays unless someone acts on it again (a failed one may be retried by
// another operator, so it is asked for again).
const SETTLED = ["ready", "cancelled", "deleted"];

async function renderActions() {
  // Only documents that may still change are asked for again: a few requests at most.
  await Promise.all(acted.map(async (a) => {
    if (a.doc && SETTLED.includes(a.doc.status)) return;
    try {
      a.doc = await call(`/documents/${a.id}`);
    } catch (err) {
      if (err.status === 404) a.doc = { status: "deleted" };
    }
  }));
  fill($("actions"), acted, (a) =>
    el("li", { "data-document": a.id },
      status(a.doc ? a.doc.status : "queued"),
      el("span", { class: "grow" },
        el("span", { class: "mono" }, short(a.id)), ` ${a.action}`,
        a.doc && a.doc.error ? el("span", { class: "detail" }, a.doc.error) : null)),
    "Nothing yet.");
}

function renderQueued(page) {
  fill($("queued"), page.items, (doc) =>
    el("li", { "data-document": doc.id },
      status(doc.status),
      el("span", { class: "grow" },
        el("span", { class: "mono" }, short(doc.id)), ` ${doc.document_type} · ${doc.output_format} · ${doc.priority}`,
        el("span", { class: "detail" }, `asked for ${ago(doc.created_at)}`)),
      button("Cancel", "cancel-document", async () => {
        await call(`/documents/${doc.id}/cancel`, { method: "POST" });
        remember(doc.id, "cancelled");
      })),
    `Nothing queued${page.total > page.items.length ? "" : ""}.`);
}

function renderBatches(page) {
  fill($("batches"), page.items, (b) => {
    const percent = b.total ? Math.round((100 * b.ready) / b.total) : 100;
    const part = (cls, n) => el("span", { class: cls, style: `width:${b.total ? (100 * n) / b.total : 0}%` });
    const active = b.status === "queued" || b.status === "running";
    return el("li", { "data-batch": b.id },
      status(b.status),
      el("span", { class: "grow" },
        el("span", { class: "mono" }, short(b.id)), ` ${b.document_type} · ${b.output_format}`,
        el("span", { class: "detail", "data-testid": "counts" },
          `${b.ready} ready, ${b.failed} failed, ${b.cancelled} cancelled, ${b.processing} rendering, ${b.queued} queued of ${b.total}` +
          (b.finished_at ? ` · finished ${ago(b.finished_at)}` : ""))),
      el("span", { class: "progress" },
        el("span", {
          class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent,
          "aria-label": `${b.status}, ${percent}% ready`, "data-testid": "bar",
        }, part("ready", b.ready), part("failed", b.failed), part("cancelled", b.cancelled), part("processing", b.processing)),
        el("span", { class: "detail" }, `${percent}% ready` + (b.status === "cancelled" && b.finished_at ? ", stopped" : ""))),
      active ? button("Cancel", "cancel-batch", () => call(`/document-batches/${b.id}/cancel`, { method: "POST" })) : null,
      b.failed > 0 ? button("Retry failed", "retry-batch", () => call(`/document-batches/${b.id}/retry`, { method: "POST" })) : null);
  }, "No batch yet.");
}

function renderWebhooks(queue) {
  $("webhooks-pending").textContent = `(${queue.webhooks_pending} pending)`;
  fill($("webhooks"), queue.failing_webhooks, (d) =>
    el("li", { "data-delivery": d.id },
      status(d.status === "pending" ? "retrying" : d.status),
      el("span", { class: "grow" },
        `${d.event_type} → `, el("span", { class: "mono" }, d.url),
        el("span", { class: "detail" },
          `${d.last_error || ""}${d.last_status_code ? ` (HTTP ${d.last_status_code})` : ""} · ` +
          `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` +
          (d.next_attempt_at ? ` · next ${new Date(d.next_attempt_at).toLocaleTimeString()}` : " · given up"))),
      button("Redeliver", "redeliver", () =>
        call(`/webhooks/${d.endpoint_id}/deliveries/${d.id}/redeliver`, { method: "POST" }))),
    "No failing delivery.");
}

// ---------------------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------------------

async function refresh() {
  if (!me) return;
  try {
    const [queue, workers, queued, batches] = await Promise.all([
      call("/ops/queue"),
      call("/ops/workers"),
      call("/documents?status=queued&limit=10"),
      call("/document-batches?limit=10"),
    ]);
    renderQueue(queue);
    renderChart(queue.finished_per_minute);
    renderWorkers(workers);
    renderFailures(queue);
    renderQueued(queued);
    renderBatches(batches);
    renderWebhooks(queue);
    await renderActions();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    showProblem(null);
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signOut(err.message);
    showProblem(`Cannot refresh: ${err.message}. Trying again every ${REFRESH_MS / 1000} s.`);
  }
}

// One refresh after the other, never two at once; stops when signed out.
async function loop() {
  clearTimeout(timer);
  await refresh();
  if (me) timer = setTimeout(loop, REFRESH_MS);
}

async function start() {
  try {
    me = await call("/auth/me");
  } catch (err) {
    if (err.status === 401 || err.status === 403) return signOut(null);
    // The API is unreachable for now: keep the session and try again.
    showSignIn(`Cannot reach the API (${err.message}); trying again.`);
    timer = setTimeout(start, REFRESH_MS);
    return;
  }
  if (me.role !== "manager" && me.role !== "admin") {
    return signOut("The console is for managers and admins.");
  }
  $("who").textContent = `${me.email} (${me.role})`;
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("console").hidden = false;
  await loop();
}

function showSignIn(message) {
  $("console").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
}

function signOut(message) {
  clearTimeout(timer);
  const refreshToken = store.getItem("refresh_token");
  if (refreshToken) {
    // Close the session on the server too (an agent turned away included).
    fetch(`${API}/auth/logout`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: refreshToken }),
    }).catch(() => {});
  }
  store.removeItem("access_token");
  store.removeItem("refresh_token");
  me = null;
  showRefusal(null);
  showSignIn(message);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    $("sign-in-error").textContent = "";
    try {
      const response = await fetch(`${API}/auth/login`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ email: form.get("email"), password: form.get("password") }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      keepTokens(body);
      await start();
    } catch (err) {
      $("sign-in-error").textContent = err.message;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(null));
  if (store.getItem("access_token")) start();
  else showSignIn(null);
});
