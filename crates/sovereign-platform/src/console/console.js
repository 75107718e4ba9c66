// The Sovereign operator console. Plain DOM, no framework, no network but this platform:
// every panel reads the same JSON the /api/admin/ endpoints serve (here under
// /console/api/, authenticated by the console's HttpOnly cookie), refreshes itself every
// two seconds, and sends the session's anti-CSRF token with every change.
"use strict";

const REFRESH_MS = 2000;
const state = { csrf: null, csrfHeader: "x-csrf-token", panel: "plugins", timer: null,
  auditBefore: null, eventsBefore: null, filter: { plugin: "", topic: "" } };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "type" || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

class ApiFailure extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(path, options) {
  const opts = options || {};
  const headers = { "accept": "application/json" };
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  if (opts.method && opts.method !== "GET" && state.csrf) headers[state.csrfHeader] = state.csrf;
  const response = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = null; }
  }
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`;
    throw new ApiFailure(response.status, message);
  }
  return data;
}

const api = (path, options) => call(`/console/api${path}`, options);

// ------------------------------------------------------------------ formatting

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

function when(ms) {
  if (!ms) return "never";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function ms(value) {
  return value === null || value === undefined ? "-" : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

/// Keeps a table body's rows keyed (by `data-key`), so that a refresh updates them in
/// place: no flicker, no layout shift, focus stays where it was.
function syncRows(body, items, key, build, update) {
  const existing = new Map([...body.children].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const item of items) {
    const k = String(key(item));
    let row = existing.get(k);
    if (!row) { row = build(item); row.dataset.key = k; }
    existing.delete(k);
    update(row, item);
    const next = previous ? previous.nextSibling : body.firstChild;
    if (next !== row) body.insertBefore(row, next);
    previous = row;
  }
  for (const stale of existing.values()) stale.remove();
  if (items.length === 0 && !body.querySelector(".empty")) {
    const columns = body.closest("table").querySelectorAll("thead th").length;
    body.append(el("tr", { class: "empty" }, el("td", { colSpan: columns }, "Nothing to show.")));
  } else if (items.length > 0) {
    body.querySelectorAll(".empty").forEach((row) => row.remove());
  }
}

function cells(row, values) {
  values.forEach((value, i) => {
    const cell = row.children[i];
    if (value instanceof Node) {
      if (cell.firstChild !== value) cell.replaceChildren(value);
    } else if (cell.textContent !== String(value)) {
      cell.textContent = String(value);
    }
  });
}

// ------------------------------------------------------------------ confirmation

function confirmAction(text, expected) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  const typedRow = $("confirm-typed-row");
  const typed = $("confirm-typed");
  typed.value = "";
  typedRow.hidden = !expected;
  $("confirm-expected").textContent = expected || "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const ok = dialog.returnValue === "ok" && (!expected || typed.value.trim() === expected);
      if (dialog.returnValue === "ok" && expected && !ok) {
        showError(`Not confirmed: you typed "${typed.value.trim()}", not "${expected}". Nothing was changed.`);
      }
      resolve(ok);
    }, { once: true });
    dialog.showModal();
    (expected ? typed : $("confirm-cancel")).focus();
  });
}

async function act(description, action) {
  clearError();
  try {
    const result = await action();
    await refresh();
    return result;
  } catch (e) {
    showError(`${description} failed: ${e.message}`);
    return null;
  }
}

// ------------------------------------------------------------------ plugins

function pluginStatus(p) {
  if (p.load_error) return el("span", { class: "status bad" }, `not loaded: ${p.load_error}`);
  return p.enabled
    ? el("span", { class: "status good" }, "enabled")
    : el("span", { class: "status warn" }, "disabled");
}

async function renderPlugins() {
  const plugins = await api("/plugins");
  syncRows($("plugins-body"), plugins, (p) => p.id, (p) => {
    const row = el("tr", { "data-plugin": p.id });
    for (let i = 0; i < 11; i += 1) row.append(el(i === 0 ? "th" : "td", i === 0 ? { scope: "row" } : {}));
    const toggle = el("button", { type: "button", class: "toggle" });
    toggle.addEventListener("click", () => togglePlugin(row.dataset.key, toggle.dataset.enabled === "true"));
    const purge = el("button", { type: "button", class: "purge danger" }, "Purge data");
    purge.addEventListener("click", () => purgePlugin(row.dataset.key));
    row.lastChild.append(toggle, " ", purge);
    const meter = el("meter", { min: 0, class: "usage" });
    const usageText = el("span", { class: "usage-text" });
    row.children[4].append(meter, " ", usageText);
    return row;
  }, (row, p) => {
    const activity = p.activity || {};
    row.children[0].textContent = p.name === p.id ? `${p.id} ${p.version}` : `${p.name} (${p.id}) ${p.version}`;
    row.children[1].replaceChildren(pluginStatus(p));
    row.children[2].textContent = p.mode;
    row.children[3].textContent = p.api_version || "not recorded";
    const meter = row.querySelector("meter");
    meter.max = p.quota_bytes;
    meter.value = Math.min(p.used_bytes, p.quota_bytes);
    meter.high = p.quota_bytes * 0.8;
    const share = p.quota_bytes ? Math.round((100 * p.used_bytes) / p.quota_bytes) : 0;
    row.querySelector(".usage-text").textContent = `${bytes(p.used_bytes)} of ${bytes(p.quota_bytes)} (${share}%)`;
    row.children[5].textContent = activity.requests_last_minute ?? 0;
    row.children[6].textContent = activity.error_rate === undefined ? "-" : `${(100 * activity.error_rate).toFixed(1)}%`;
    row.children[7].textContent = ms(activity.p95_ms);
    row.children[8].textContent = p.denials;
    const problem = p.last_problem
      ? `${p.last_problem.level}: ${p.last_problem.message}`
      : activity.last_error ? `HTTP ${activity.last_error.status} at ${when(activity.last_error.at_ms)}` : "none";
    row.children[9].textContent = problem;
    const toggle = row.querySelector(".toggle");
    toggle.dataset.enabled = String(p.enabled);
    toggle.textContent = p.enabled ? "Disable" : "Enable";
  });
  const tables = $("plugin-tables-body");
  tables.replaceChildren(...plugins.map((p) => el("div", { class: "plugin-tables" },
    el("h3", {}, p.id),
    p.tables.length === 0 ? el("p", {}, "No tables yet.") : el("ul", {}, ...p.tables.map((t) =>
      el("li", {}, `${t.name}: ${t.rows} rows, ${bytes(t.bytes)}`))))));
}

async function togglePlugin(id, enabled) {
  if (enabled && !(await confirmAction(`Disable plugin ${id}? Its routes answer 404 until it is enabled again; its data stays.`))) return;
  await act(enabled ? `Disabling ${id}` : `Enabling ${id}`,
    () => api(`/plugins/${encodeURIComponent(id)}/${enabled ? "disable" : "enable"}`, { method: "POST" }));
}

async function purgePlugin(id) {
  if (!(await confirmAction(`Purge all of plugin ${id}'s data? A backup of it is written first (under backups/); the plugin stays installed with empty tables gone.`, id))) return;
  const report = await act(`Purging ${id}`,
    () => api(`/plugins/${encodeURIComponent(id)}/purge`, { method: "POST", body: { confirm: id } }));
  if (report) showError(`Purged ${id}: dropped ${report.dropped.length} object(s); backup at ${report.backup || "none"}.`);
}

// ------------------------------------------------------------------ sync

function drawChart(samples) {
  const svg = $("lag-chart");
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 160, pad = 30;
  const now = Date.now();
  const from = now - 3600 * 1000;
  const max = Math.max(50, ...samples.map((s) => s.lag_ms));
  const x = (t) => pad + ((t - from) / (now - from)) * (width - pad - 5);
  const y = (v) => height - pad + 10 - (v / max) * (height - pad - 10);
  const shapes = [];
  const line = (x1, y1, x2, y2, cls) => {
    const l = document.createElementNS(ns, "line");
    l.setAttribute("x1", x1); l.setAttribute("y1", y1); l.setAttribute("x2", x2); l.setAttribute("y2", y2);
    l.setAttribute("class", cls);
    return l;
  };
  const label = (tx, ty, text, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor || "start");
    t.setAttribute("class", "axis-label");
    t.textContent = text;
    return t;
  };
  shapes.push(line(pad, y(0), width - 5, y(0), "axis"), line(pad, y(max), pad, y(0), "axis"));
  shapes.push(label(pad - 4, y(max) + 4, `${max}`, "end"), label(pad - 4, y(0), "0", "end"));
  shapes.push(label(pad, height - 4, "1 h ago"), label(width - 5, height - 4, "now", "end"));
  if (samples.length > 0) {
    const points = samples.map((s) => `${x(s.at_ms).toFixed(1)},${y(s.lag_ms).toFixed(1)}`).join(" ");
    const poly = document.createElementNS(ns, "polyline");
    poly.setAttribute("points", points);
    poly.setAttribute("class", "lag-line");
    shapes.push(poly);
  }
  svg.replaceChildren(...shapes);
  svg.dataset.samples = String(samples.length);
  svg.dataset.watermark = samples.length ? String(samples[samples.length - 1].watermark) : "0";
  const worst = samples.reduce((m, s) => Math.max(m, s.lag_ms), 0);
  const last = samples[samples.length - 1];
  $("lag-summary").textContent = samples.length === 0 ? "no samples yet"
    : `${samples.length} samples, worst ${worst} ms, now ${last.lag_ms} ms, watermark ${last.watermark}`;
}

async function renderSync() {
  const [status, history] = await Promise.all([api("/sync"), api("/sync/history")]);
  syncRows($("sync-body"), status.slices, (s) => s.slice, () => el("tr", {}, el("th", { scope: "row" }), el("td"), el("td"), el("td"), el("td")),
    (row, s) => cells(row, [s.slice, s.watermark, s.backlog_rows, `${s.lag_ms} ms`, s.built ? "yes" : "no: rebuild needed"]));
  $("sync-last-applied").textContent = when(status.last_applied_at_ms);
  $("sync-last-error").textContent = status.last_error ? `${status.last_error[1]} (${status.last_error[0]})` : "none";
  drawChart(history);
}

async function reconcile() {
  $("reconcile-result").textContent = "reconciling...";
  const report = await act("Reconcile", () => api("/sync/reconcile", { method: "POST" }));
  $("reconcile-result").textContent = report
    ? `compared ${report.chunks} chunks: ${report.differences.length} rows differ, ${report.pending} still waiting to be applied`
    : "failed (see the message above)";
}

// ------------------------------------------------------------------ host

async function renderHost() {
  const panel = await api("/host");
  const host = panel.state;
  const status = $("host-status");
  const kinds = { running: "good", starting: "warn", crash_loop: "bad", stopped: "bad" };
  status.textContent = panel.summary;
  status.className = `status ${host ? kinds[host.status] || "warn" : "warn"}`;
  status.dataset.status = host ? host.status : "none";
  $("host-restarts").textContent = host && host.restarts !== undefined ? host.restarts : "-";
  $("host-pid").textContent = host && host.pid ? `pid ${host.pid}` : "-";
  $("host-memory").textContent = panel.memory_kib ? bytes(panel.memory_kib * 1024) : "-";
  $("host-sandbox").textContent = panel.sandbox || "-";
  $("host-probe").textContent = panel.core_db_probe || "-";
  $("host-denials").textContent = panel.denials.length === 0 ? "none" : panel.denials.map(([id, n]) => `${id}: ${n}`).join(", ");
}

async function restartHost() {
  if (!(await confirmAction("Restart the extension host? Plugin requests answer 503 for a moment; core requests are not affected."))) return;
  await act("Restarting the host", () => api("/host/restart", { method: "POST" }));
}

// ------------------------------------------------------------------ backups

async function renderBackups() {
  const [list, job] = await Promise.all([api("/backups"), api("/backups/job")]);
  syncRows($("backups-body"), list, (b) => b.name, (b) => {
    const row = el("tr", { "data-backup": b.name }, el("th", { scope: "row" }), el("td"), el("td"), el("td"), el("td"), el("td"));
    const verify = el("button", { type: "button", class: "verify" }, "Verify");
    verify.addEventListener("click", () => act(`Verifying ${row.dataset.key}`,
      () => api(`/backups/${encodeURIComponent(row.dataset.key)}/verify`, { method: "POST" })));
    row.lastChild.append(verify);
    return row;
  }, (row, b) => {
    const v = b.verification;
    cells(row, [b.name, b.created_at, `${bytes(b.bytes)} in ${b.files} files`, b.took_ms ? `${(b.took_ms / 1000).toFixed(1)} s` : "-",
      v ? (v.ok ? `verified: ${v.message}` : `FAILED: ${v.message}`) : "not verified since the platform started"]);
    row.children[4].className = v ? (v.ok ? "status good" : "status bad") : "";
  });
  const progress = $("backup-progress");
  if (job) {
    const running = job.state === "running" || job.state === "verifying";
    $("backup-job").textContent = `${job.name}: ${job.state}${job.error ? ` (${job.error})` : ""}`;
    progress.hidden = !running;
    progress.max = Math.max(job.total_bytes, 1);
    progress.value = job.copied_bytes;
    $("backup-start").disabled = running;
  }
}

async function startBackup() {
  await act("Starting a backup", () => api("/backups", { method: "POST" }));
}

// ------------------------------------------------------------------ stores

async function renderStores() {
  const panel = await api("/stores");
  syncRows($("stores-body"), panel.files, (f) => f.role, () => el("tr", {}, el("th", { scope: "row" }), el("td"), el("td"), el("td"), el("td")),
    (row, f) => {
      const check = f.integrity;
      cells(row, [f.role, f.path, bytes(f.bytes), bytes(f.wal_bytes),
        check ? `${check.ok ? "ok" : `FAILED: ${check.message}`} (${when(check.at_ms)})` : "not checked yet"]);
      row.children[4].className = check ? (check.ok ? "status good" : "status bad") : "";
    });
  $("schema-versions").replaceChildren(...Object.entries(panel.schema_versions).map(([scope, v]) => el("li", {}, `${scope}: ${v}`)));
  $("pending-migrations").replaceChildren(...(panel.pending.length === 0 ? [el("li", {}, "none: every migration is applied")]
    : panel.pending.map((m) => el("li", { class: "status warn" }, `${m.scope}: ${m.file} (${m.state})`))));
}

// ------------------------------------------------------------------ audit and events

function query(extra) {
  const params = new URLSearchParams();
  if (state.filter.plugin) params.set("plugin", state.filter.plugin);
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined && v !== "") params.set(k, v);
  const text = params.toString();
  return text ? `?${text}` : "";
}

async function renderLogs() {
  const [audit, events] = await Promise.all([
    api(`/audit${query({ limit: 50, before: state.auditBefore })}`),
    api(`/events${query({ limit: 50, topic: state.filter.topic, before: state.eventsBefore })}`),
  ]);
  syncRows($("audit-body"), audit, (a) => a.id, () => el("tr", {}, el("th", { scope: "row" }), el("td"), el("td"), el("td"), el("td")),
    (row, a) => cells(row, [a.id, a.at, a.actor_user_id === null ? "-" : `user ${a.actor_user_id}`, a.action, a.target || "-"]));
  syncRows($("events-body"), events, (e) => e.seq, () => el("tr", {}, el("th", { scope: "row" }), el("td"), el("td"), el("td"), el("td")),
    (row, e) => cells(row, [e.seq, e.received_at, e.plugin, e.topic, e.error || "-"]));
  $("audit-more").dataset.last = audit.length ? audit[audit.length - 1].id : "";
  $("events-more").dataset.last = events.length ? events[events.length - 1].seq : "";
}

// ------------------------------------------------------------------ the page

const RENDER = { plugins: renderPlugins, sync: renderSync, host: renderHost, backups: renderBackups, stores: renderStores, logs: renderLogs };

async function refresh() {
  if ($("confirm").open) return;
  try {
    await RENDER[state.panel]();
    $("refreshed").textContent = new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 401) { showLogin(); return; }
    showError(`Could not refresh the ${state.panel} panel: ${e.message}`);
  }
}

function showPanel(name) {
  state.panel = name;
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.panel === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${name}`;
  refresh();
}

function showLogin() {
  clearInterval(state.timer);
  state.csrf = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  $("login-email").focus();
}

function showApp(session) {
  state.csrf = session.csrf_token;
  state.csrfHeader = session.csrf_header;
  $("who-email").textContent = session.user.email;
  $("who").hidden = false;
  $("login").hidden = true;
  $("app").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  showPanel(state.panel);
}

async function start() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    try {
      const session = await call("/console/login", { method: "POST", body: { email: $("login-email").value, password: $("login-password").value } });
      $("login-password").value = "";
      showApp(session);
    } catch (e) {
      showError(`Login failed: ${e.message}`);
    }
  });
  $("logout").addEventListener("click", async () => {
    try { await call("/console/logout", { method: "POST" }); } catch (_) { /* the session is gone either way */ }
    showLogin();
  });
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  $("reconcile").addEventListener("click", reconcile);
  $("host-restart").addEventListener("click", restartHost);
  $("backup-start").addEventListener("click", startBackup);
  $("logs-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filter = { plugin: $("filter-plugin").value.trim(), topic: $("filter-topic").value.trim() };
    state.auditBefore = null;
    state.eventsBefore = null;
    $("audit-body").replaceChildren();
    $("events-body").replaceChildren();
    refresh();
  });
  $("audit-more").addEventListener("click", () => { state.auditBefore = $("audit-more").dataset.last || null; $("audit-body").replaceChildren(); refresh(); });
  $("events-more").addEventListener("click", () => { state.eventsBefore = $("events-more").dataset.last || null; $("events-body").replaceChildren(); refresh(); });
  try {
    showApp(await call("/console/session"));
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 403) showError(e.message);
    showLogin();
  }
}

document.addEventListener("DOMContentLoaded", start);
