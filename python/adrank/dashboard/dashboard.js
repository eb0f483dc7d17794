// adrank live dashboard: polls /dashboard/data every 2 s and draws each model version's figures as plain SVG.
// No framework and no chart library: the page must work from the server's own port with no network.
// This module polls and lays out the page; charts.js draws each chart; summary.js, status_codes.js and
// rollouts.js fill the summary row, the calls-by-status-code chart and the rollout panels.

import { bytesUnit, drawBarChart, drawLineChart, el, ensureChart, formatClock, formatValue, swatch } from "./charts.js";
import { renderRollouts } from "./rollouts.js";
import { renderCalls } from "./status_codes.js";
import { renderSummary } from "./summary.js";

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 5000;


// Colours follow the metric (Okabe-Ito palette, safe for colour-blind readers); the versions of one model
// differ by dash pattern on lines and by fill on bars, in the order they were first seen.
const VERSION_DASHES = ["", "7 4", "2 3", "10 3 2 3"];
const VERSION_FILLS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7"];

const MODEL_CHARTS = [
  {
    id: "latency",
    title: "Request latency",
    unit: "ms",
    metrics: [
      { key: "request_p50_ms", label: "p50", color: "#009E73" },
      { key: "request_p95_ms", label: "p95", color: "#E69F00" },
      { key: "request_p99_ms", label: "p99", color: "#D55E00" },
    ],
  },
  {
    id: "throughput",
    title: "Requests",
    unit: "req/s",
    metrics: [{ key: "requests_per_s", label: "requests/s", color: "#0072B2" }],
  },
  {
    id: "candidates",
    title: "Candidates scored",
    unit: "candidates/s",
    metrics: [{ key: "candidates_per_s", label: "candidates/s", color: "#56B4E9" }],
  },
  {
    id: "errors",
    title: "Errors and shed",
    unit: "req/s",
    metrics: [
      { key: "errors_per_s", label: "errors/s", color: "#D55E00" },
      { key: "shed_per_s", label: "shed/s", color: "#E69F00" },
    ],
  },
  {
    id: "queue-compute",
    title: "Queue vs compute time",
    unit: "ms",
    metrics: [
      { key: "queue_p50_ms", label: "queue p50", color: "#56B4E9" },
      { key: "queue_p99_ms", label: "queue p99", color: "#0072B2" },
      { key: "compute_p50_ms", label: "compute p50", color: "#E69F00" },
      { key: "compute_p99_ms", label: "compute p99", color: "#D55E00" },
    ],
  },
  { id: "batch-rows", kind: "bars", title: "Batch rows, last minute", unit: "batches", xTitle: "rows per batch (≤)" },
  {
    id: "queue-rows",
    title: "Queue rows",
    unit: "rows",
    metrics: [{ key: "queue_rows", label: "queued rows", color: "#CC79A7" }],
  },
  // A model with a context tower (config.yaml's context_tower): its cache's share of lookups that hit, and what it
  // holds. Drawn only for a model whose versions have a cache (`requires`: null for the others).
  {
    id: "context-cache",
    title: "Context cache hit ratio",
    unit: "hits / lookups",
    requires: "context_cache_bytes",
    metrics: [{ key: "context_cache_hit_ratio", label: "hit ratio", color: "#009E73" }],
  },
  {
    id: "context-cache-bytes",
    title: "Context cache held",
    unit: "MiB",
    requires: "context_cache_bytes",
    metrics: [{ key: "context_cache_bytes", label: "held", color: "#0072B2", scale: 1 / 1048576 }],
  },
];

const MEMORY_CHART = {
  id: "memory-pool",
  title: "Memory pool",
  unit: "bytes",
  metrics: [
    { key: "total_bytes", label: "total", color: "#555555" },
    { key: "in_use_bytes", label: "in use", color: "#0072B2" },
    { key: "locked_bytes", label: "locked", color: "#D55E00" },
  ],
};

const state = {
  minutes: 10,
  data: null, // the last good reply; kept on screen while fetches fail
  hiddenModels: new Set(),
  hiddenVersions: new Set(), // "model/version" keys the user unchecked; new versions start shown
  styleIndex: new Map(), // "model/version" -> index into VERSION_DASHES / VERSION_FILLS
  generation: 0, // bumped by every poll, so a reply for an older window is dropped
  timer: 0,
};

const versionKey = (model, version) => `${model}/${version}`;

// ---------------------------------------------------------------------------------------------- polling

async function fetchData(minutes) {
  const response = await fetch(`/dashboard/data?minutes=${minutes}`, {
    cache: "no-store",
    signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
  });
  if (!response.ok) {
    throw new Error(`HTTP ${response.status} ${response.statusText}`.trim());
  }
  const data = await response.json();
  if (!Array.isArray(data?.series) || !Number.isFinite(data?.now)) {
    throw new Error("unexpected reply (no series or now)");
  }
  return data;
}

function describeError(error) {
  if (error?.name === "TimeoutError") return `no reply within ${FETCH_TIMEOUT_MS / 1000} s`;
  if (error instanceof TypeError) return `cannot reach the server (${error.message})`;
  return error?.message ?? String(error);
}

async function poll() {
  const generation = ++state.generation;
  clearTimeout(state.timer);
  let data = null;
  let failure = null;
  try {
    data = await fetchData(state.minutes);
  } catch (error) {
    failure = error;
  }
  if (generation !== state.generation) return; // a newer poll (the window changed) took over
  if (failure) {
    setStatus("error", `error: ${describeError(failure)}${state.data ? " (showing the last data received)" : ""}`);
  } else {
    state.data = data;
    // When this page last heard from the server (the samples' own time is shown as text): for tests.
    document.getElementById("last-update").dataset.fetchedAt = String(Date.now());
    safeRender();
  }
  state.timer = setTimeout(poll, POLL_MS);
}

// A drawing bug must show on the page, not as an uncaught error that stops the polling.
function safeRender() {
  try {
    render();
    setStatus("live", "live");
  } catch (error) {
    setStatus("error", `error: cannot draw the data (${error.message})`);
  }
}

function setStatus(kind, text) {
  const status = document.getElementById("status");
  status.dataset.state = kind;
  status.textContent = text;
}

// --------------------------------------------------------------------------------------------- rendering

function render() {
  const data = state.data;
  if (!data) return;
  const series = [...data.series].sort((a, b) => a.model.localeCompare(b.model) || a.version - b.version);
  for (const s of series) {
    assignStyle(s.model, s.version);
  }
  syncSelector(series);
  pruneGone(series);
  renderHeader(data);

  const domain = [data.now - state.minutes * 60, data.now];
  renderSummary(document.getElementById("summary"), data.summary ?? []);
  renderMemory(data.memory_pool, domain);
  renderCalls(document.getElementById("calls-charts"), data.calls, domain);
  renderRollouts(document.getElementById("rollouts"), data.rollouts ?? []);
  const models = [...new Set(series.map((s) => s.model))];
  for (const model of models) {
    const panel = ensurePanel(model);
    const shown = !state.hiddenModels.has(model);
    panel.hidden = !shown;
    const visible = shown
      ? series.filter((s) => s.model === model && !state.hiddenVersions.has(versionKey(s.model, s.version)))
      : [];
    renderModelPanel(panel, visible, domain);
  }
}

// Versions older than the history the server keeps leave its reply: drop their checkbox and panel too.
function pruneGone(series) {
  const models = new Set(series.map((s) => s.model));
  const versions = new Set(series.map((s) => versionKey(s.model, s.version)));
  for (const node of document.querySelectorAll(".model-group[data-model], section.panel[data-model]")) {
    if (!models.has(node.dataset.model)) node.remove();
  }
  for (const label of document.querySelectorAll("label.version-label")) {
    if (!versions.has(versionKey(label.dataset.model, label.dataset.version))) label.remove();
  }
}

function assignStyle(model, version) {
  const key = versionKey(model, version);
  if (state.styleIndex.has(key)) return;
  const taken = [...state.styleIndex.keys()].filter((k) => k.startsWith(`${model}/`)).length;
  state.styleIndex.set(key, taken % VERSION_DASHES.length);
}

function renderHeader(data) {
  const lastUpdate = document.getElementById("last-update");
  lastUpdate.textContent = formatClock(data.now);
  lastUpdate.dateTime = new Date(data.now * 1000).toISOString();
  document.getElementById("sampling").textContent =
    `each point covers the ${formatValue(data.window_s)} s before it, one every ${formatValue(data.interval_s)} s`;
}

function renderMemory(pool, domain) {
  const chart = ensureChart(document.getElementById("process-charts"), MEMORY_CHART, null);
  const allocator = pool?.allocator ? ` (${pool.allocator})` : "";
  chart.querySelector(".chart-title-text").textContent = `${MEMORY_CHART.title}${allocator}`;
  const raw = pool
    ? MEMORY_CHART.metrics.map((metric) => ({
        metric,
        t: pool.t ?? [],
        values: pool[metric.key] ?? [],
        label: metric.label,
      }))
    : [];
  // Bytes read best in one binary unit picked from the largest value.
  const unit = bytesUnit(Math.max(0, ...raw.flatMap((line) => line.values.filter(Number.isFinite))));
  const lines = raw.map((line) => ({
    ...line,
    color: line.metric.color,
    dash: "",
    values: line.values.map((v) => (Number.isFinite(v) ? v / unit.factor : null)),
  }));
  chart.querySelector(".unit").textContent = `(${unit.name})`;
  drawLineChart(chart, lines, domain, unit.name);
}

function renderModelPanel(panel, series, domain) {
  const container = panel.querySelector(".charts");
  for (const spec of MODEL_CHARTS) {
    if (spec.requires && !series.some((s) => (s.points?.[spec.requires] ?? []).some((v) => v != null))) {
      container.querySelector(`section.chart[data-chart="${spec.id}"]`)?.remove();
      continue;
    }
    const chart = ensureChart(container, spec, panel.dataset.model);
    if (spec.kind === "bars") {
      drawBarChart(chart, series, spec, (s) => ({ label: versionLabel(s), fill: versionFill(s) }));
    } else {
      drawLineChart(chart, linesOf(series, spec), domain, spec.unit);
    }
  }
}

// One line per (visible version, metric of the chart).
function linesOf(series, spec) {
  return series.flatMap((s) => {
    const style = state.styleIndex.get(versionKey(s.model, s.version)) ?? 0;
    return spec.metrics.map((metric) => ({
      metric,
      model: s.model,
      version: s.version,
      t: s.points?.t ?? [],
      values: scaled(s.points?.[metric.key] ?? [], metric.scale),
      label: `${versionLabel(s)} ${metric.label}`,
      color: metric.color,
      dash: VERSION_DASHES[style],
      // The legend's figure: the version's at the newest sample; none once it no longer serves (null current).
      serving: s.current != null,
      current: scaled([s.current?.[metric.key] ?? null], metric.scale)[0],
    }));
  });
}

// A metric shown in another unit than the server's (bytes as MiB); null stays null, a gap.
function scaled(values, scale) {
  return scale ? values.map((v) => (Number.isFinite(v) ? v * scale : null)) : values;
}

function versionFill(s) {
  return VERSION_FILLS[state.styleIndex.get(versionKey(s.model, s.version)) ?? 0];
}

function versionLabel(s) {
  return `${s.model} v${s.version}${s.role ? ` ${s.role}` : ""}`;
}

// ------------------------------------------------------------------------------------------ DOM skeleton

function ensurePanel(model) {
  const panels = document.getElementById("panels");
  const existing = panels.querySelector(`section.panel[data-model="${CSS.escape(model)}"]`);
  if (existing) return existing;
  const panel = el("section", { class: "panel", "data-model": model });
  const title = el("h2", {}, panel);
  title.textContent = `Model ${model}`;
  el("div", { class: "charts" }, panel);
  // Keep the model panels sorted by name, after the process panel.
  const next = [...panels.querySelectorAll("section.panel[data-model]")].find(
    (p) => p.dataset.model.localeCompare(model) > 0,
  );
  panels.insertBefore(panel, next ?? null);
  return panel;
}

// The model and version checkboxes; a version seen for the first time is added, checked.
function syncSelector(series) {
  const nav = document.getElementById("series-select");
  for (const s of series) {
    const group = ensureModelGroup(nav, s.model);
    const key = versionKey(s.model, s.version);
    let label = group.querySelector(`label.version-label[data-version="${s.version}"]`);
    if (!label) {
      label = versionCheckbox(s.model, s.version, !state.hiddenVersions.has(key));
      const next = [...group.querySelectorAll("label.version-label")].find((l) => Number(l.dataset.version) > s.version);
      group.insertBefore(label, next ?? null);
    }
    label.querySelector(".version-info").textContent = [s.role, s.state].filter(Boolean).join(" · ");
    label.querySelector(".swatch-dash").setAttribute("stroke-dasharray", VERSION_DASHES[state.styleIndex.get(key)]);
  }
}

function ensureModelGroup(nav, model) {
  const existing = nav.querySelector(`.model-group[data-model="${CSS.escape(model)}"]`);
  if (existing) return existing;
  const group = el("div", { class: "model-group", "data-model": model });
  const label = el("label", { class: "model-label" }, group);
  const input = el("input", { type: "checkbox", class: "model-toggle", "data-model": model }, label);
  input.checked = !state.hiddenModels.has(model);
  label.append(` ${model}`);
  const next = [...nav.querySelectorAll(".model-group")].find((g) => g.dataset.model.localeCompare(model) > 0);
  nav.insertBefore(group, next ?? null);
  return group;
}

function versionCheckbox(model, version, checked) {
  const label = el("label", { class: "version-label", "data-model": model, "data-version": String(version) });
  const input = el(
    "input",
    { type: "checkbox", class: "version-toggle", "data-model": model, "data-version": String(version) },
    label,
  );
  input.checked = checked;
  label.append(swatch("#333333", ""));
  label.querySelector("line").classList.add("swatch-dash");
  label.append(` v${version} `);
  el("span", { class: "version-info" }, label);
  return label;
}

function onSelectorChange(event) {
  const input = event.target;
  const { model, version } = input.dataset;
  if (input.classList.contains("model-toggle")) {
    toggle(state.hiddenModels, model, input.checked);
  } else if (input.classList.contains("version-toggle")) {
    toggle(state.hiddenVersions, versionKey(model, version), input.checked);
  } else {
    return;
  }
  safeRender(); // at once, from the data already here
}

function toggle(hidden, key, shown) {
  if (shown) hidden.delete(key);
  else hidden.add(key);
}

function onWindowChange(event) {
  state.minutes = Number(event.target.value);
  poll();
}

// ------------------------------------------------------------------------------------------------ start

function start() {
  const windowSelect = document.getElementById("window-minutes");
  state.minutes = Number(windowSelect.value);
  windowSelect.addEventListener("change", onWindowChange);
  document.getElementById("series-select").addEventListener("change", onSelectorChange);
  poll();
}

start();
