// adrank live dashboard: polls /dashboard/data every 2 s and draws each model version's figures as plain SVG.
// No framework and no chart library: the page must work from the server's own port with no network.

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";

// Chart geometry in SVG user units; each SVG scales to its box through its viewBox.
const WIDTH = 420;
const HEIGHT = 200;
const MARGIN = { top: 12, right: 28, bottom: 38, left: 60 }; // right: room for half a clock label

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
const last = (array) => array[array.length - 1];

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
  renderMemory(data.memory_pool, domain);
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
    const chart = ensureChart(container, spec, panel.dataset.model);
    if (spec.kind === "bars") {
      drawBarChart(chart, series, spec);
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
      values: s.points?.[metric.key] ?? [],
      label: `${versionLabel(s)} ${metric.label}`,
      color: metric.color,
      dash: VERSION_DASHES[style],
    }));
  });
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

function ensureChart(container, spec, model) {
  const existing = container.querySelector(`section.chart[data-chart="${spec.id}"]`);
  if (existing) return existing;
  const chart = el("section", { class: "chart", "data-chart": spec.id }, container);
  if (model !== null) chart.dataset.model = model;
  const title = el("h3", { class: "chart-title" }, chart);
  el("span", { class: "chart-title-text" }, title).textContent = spec.title;
  title.append(" ");
  el("span", { class: "unit" }, title).textContent = `(${spec.unit})`;
  const label = model === null ? spec.title : `${model} ${spec.title}`;
  el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label }, chart, SVG_NS);
  el("ul", { class: "legend" }, chart);
  return chart;
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

// --------------------------------------------------------------------------------------------- charts

function drawLineChart(chart, lines, domain, unit) {
  const svg = chart.querySelector("svg");
  svg.replaceChildren();
  const values = lines.flatMap((line) => line.values.filter((v, i) => Number.isFinite(v) && line.t[i] >= domain[0]));
  const yTicks = niceTicks(Math.max(0, ...values));
  const x = scale(domain, [MARGIN.left, WIDTH - MARGIN.right]);
  const y = scale([0, last(yTicks)], [HEIGHT - MARGIN.bottom, MARGIN.top]);
  drawValueAxis(svg, yTicks, y, unit);
  drawTimeAxis(svg, domain, x);

  const plot = el("g", { class: "plot" }, svg, SVG_NS);
  let drawn = 0;
  for (const line of lines) {
    const d = linePath(line.t, line.values, domain[0], x, y);
    if (!d) continue; // all null in the window: nothing to draw, the legend still lists it
    const path = el("path", { class: "series", d, stroke: line.color }, plot, SVG_NS);
    if (line.dash) path.setAttribute("stroke-dasharray", line.dash);
    setSeriesData(path, line);
    el("title", {}, path, SVG_NS).textContent = line.label;
    drawn += 1;
  }
  if (drawn === 0) emptyMessage(svg, lines.length ? "no traffic in this window" : "nothing selected");
  renderLegend(chart, lines, (line) => formatValue(lastValue(line.values), unit));
}

function setSeriesData(node, line) {
  if (line.model !== undefined) {
    node.dataset.model = line.model;
    node.dataset.version = String(line.version);
  }
  node.dataset.metric = line.metric.key;
}

// A path through the points, lifting the pen at nulls so missing windows show as gaps, never as zeros.
function linePath(ts, values, start, x, y) {
  const parts = [];
  let run = 0; // points in the current stretch
  const closeRun = () => {
    if (run === 1) parts.push("h0"); // a lone point: a zero-length stroke, drawn as a dot by the round cap
    run = 0;
  };
  for (let i = 0; i < ts.length; i += 1) {
    const v = values[i];
    if (!Number.isFinite(v) || ts[i] < start) {
      closeRun();
      continue;
    }
    parts.push(`${run === 0 ? "M" : "L"}${x(ts[i]).toFixed(1)},${y(v).toFixed(1)}`);
    run += 1;
  }
  closeRun();
  return parts.join("");
}

function drawBarChart(chart, series, spec) {
  const svg = chart.querySelector("svg");
  svg.replaceChildren();
  const groups = series
    .filter((s) => Array.isArray(s.batch_rows?.counts))
    .map((s) => ({
      model: s.model,
      version: s.version,
      label: versionLabel(s),
      fill: VERSION_FILLS[state.styleIndex.get(versionKey(s.model, s.version)) ?? 0],
      counts: s.batch_rows.counts,
      bounds: s.batch_rows.bounds ?? [],
    }));
  const bounds = groups[0]?.bounds ?? [];
  const [lo, hi] = bucketRange(groups, bounds.length + 1);
  const buckets = hi - lo + 1;
  const yTicks = niceTicks(Math.max(0, ...groups.flatMap((g) => g.counts.slice(lo, hi + 1))), true);
  const y = scale([0, last(yTicks)], [HEIGHT - MARGIN.bottom, MARGIN.top]);
  drawValueAxis(svg, yTicks, y, spec.unit);

  const band = (WIDTH - MARGIN.left - MARGIN.right) / buckets;
  const barWidth = (band * 0.8) / Math.max(1, groups.length);
  drawBucketAxis(svg, bounds, lo, hi, band, spec.xTitle);

  const plot = el("g", { class: "plot" }, svg, SVG_NS);
  let drawn = 0;
  groups.forEach((group, g) => {
    for (let b = lo; b <= hi; b += 1) {
      const count = group.counts[b] ?? 0;
      if (count <= 0) continue;
      const bar = el(
        "rect",
        {
          class: "bar",
          x: (MARGIN.left + (b - lo) * band + band * 0.1 + g * barWidth).toFixed(1),
          y: y(count).toFixed(1),
          width: Math.max(1, barWidth - 1).toFixed(1),
          height: (y(0) - y(count)).toFixed(1),
          fill: group.fill,
          "data-model": group.model,
          "data-version": String(group.version),
          "data-bucket": bucketLabel(bounds, b),
          "data-count": String(count),
        },
        plot,
        SVG_NS,
      );
      el("title", {}, bar, SVG_NS).textContent = `${group.label}: ${count} batches of ${bucketLabel(bounds, b)} rows`;
      drawn += 1;
    }
  });
  if (drawn === 0) emptyMessage(svg, groups.length ? "no batches in the last minute" : "nothing selected");
  const total = (group) => group.counts.reduce((sum, c) => sum + c, 0);
  const legend = groups.map((group) => ({ ...group, metric: { key: "batch_rows" }, color: group.fill, bar: true }));
  renderLegend(chart, legend, (group) => `${total(group)} batches`);
}

// The buckets worth showing: the populated ones with one empty neighbour each side, at least 8 in all.
function bucketRange(groups, n) {
  const used = [];
  for (let b = 0; b < n; b += 1) {
    if (groups.some((g) => (g.counts[b] ?? 0) > 0)) used.push(b);
  }
  let lo = used.length ? Math.max(0, used[0] - 1) : 0;
  let hi = used.length ? Math.min(n - 1, last(used) + 1) : Math.min(n - 1, 7);
  while (hi - lo + 1 < Math.min(8, n)) {
    if (lo > 0) lo -= 1;
    if (hi - lo + 1 < Math.min(8, n) && hi < n - 1) hi += 1;
  }
  return [lo, hi];
}

function bucketLabel(bounds, b) {
  return b < bounds.length ? String(bounds[b]) : `>${last(bounds)}`;
}

function renderLegend(chart, items, valueOf) {
  const legend = chart.querySelector(".legend");
  legend.replaceChildren();
  for (const item of items) {
    const li = el("li", { class: "legend-item" }, legend);
    setSeriesData(li, item);
    li.append(item.bar ? barSwatch(item.color) : swatch(item.color, item.dash));
    el("span", { class: "legend-label" }, li).textContent = item.label;
    el("span", { class: "legend-value" }, li).textContent = valueOf(item);
  }
}

function emptyMessage(svg, text) {
  const message = el(
    "text",
    { class: "empty", x: (MARGIN.left + WIDTH - MARGIN.right) / 2, y: (MARGIN.top + HEIGHT - MARGIN.bottom) / 2 },
    svg,
    SVG_NS,
  );
  message.textContent = text;
}

// ------------------------------------------------------------------------------------------------- axes

function drawValueAxis(svg, ticks, y, unit) {
  const axis = el("g", { class: "axis", "data-axis": "y" }, svg, SVG_NS);
  const step = ticks[1] - ticks[0];
  for (const tick of ticks) {
    const ty = y(tick).toFixed(1);
    el("line", { class: "grid-line", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: ty, y2: ty }, axis, SVG_NS);
    const label = el("text", { class: "tick-label", x: MARGIN.left - 6, y: ty, "text-anchor": "end" }, axis, SVG_NS);
    label.textContent = formatTick(tick, step);
  }
  const cy = (MARGIN.top + HEIGHT - MARGIN.bottom) / 2;
  const title = el(
    "text",
    { class: "axis-title", "data-axis": "y", x: 12, y: cy, transform: `rotate(-90 12 ${cy})` },
    axis,
    SVG_NS,
  );
  title.textContent = unit;
}

function drawTimeAxis(svg, domain, x) {
  const axis = el("g", { class: "axis", "data-axis": "x" }, svg, SVG_NS);
  const base = HEIGHT - MARGIN.bottom;
  el("line", { class: "axis-line", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: base, y2: base }, axis, SVG_NS);
  for (const t of timeTicks(domain)) {
    const tx = x(t).toFixed(1);
    el("line", { class: "tick", x1: tx, x2: tx, y1: base, y2: base + 4 }, axis, SVG_NS);
    const label = el("text", { class: "tick-label", x: tx, y: base + 15, "text-anchor": "middle" }, axis, SVG_NS);
    label.textContent = formatClock(t);
  }
  axisTitle(axis, "local time (HH:MM:SS)");
}

function drawBucketAxis(svg, bounds, lo, hi, band, title) {
  const axis = el("g", { class: "axis", "data-axis": "x" }, svg, SVG_NS);
  const base = HEIGHT - MARGIN.bottom;
  el("line", { class: "axis-line", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: base, y2: base }, axis, SVG_NS);
  const every = hi - lo + 1 > 12 ? 2 : 1; // keep the labels from overlapping
  for (let b = lo; b <= hi; b += every) {
    const tx = (MARGIN.left + (b - lo + 0.5) * band).toFixed(1);
    const label = el("text", { class: "tick-label", x: tx, y: base + 15, "text-anchor": "middle" }, axis, SVG_NS);
    label.textContent = bucketLabel(bounds, b);
  }
  axisTitle(axis, title);
}

function axisTitle(axis, text) {
  const x = (MARGIN.left + WIDTH - MARGIN.right) / 2;
  const title = el("text", { class: "axis-title", "data-axis": "x", x, y: HEIGHT - 4 }, axis, SVG_NS);
  title.textContent = text;
}

// ---------------------------------------------------------------------------------------------- scales

function scale([d0, d1], [r0, r1]) {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

// 0 .. a round top at or above max, in 3 to 6 round steps (1, 2, 2.5 or 5 times a power of ten).
function niceTicks(max, integers = false) {
  const top = max > 0 && Number.isFinite(max) ? max : 1;
  const rough = top / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  if (integers) step = Math.max(1, Math.ceil(step));
  const count = Math.ceil(top / step - 1e-9);
  return Array.from({ length: count + 1 }, (_, i) => i * step);
}

// Ticks on round clock times (a multiple of the step), at most 6 across the window: more would overlap.
function timeTicks([start, end]) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800];
  const step = steps.find((s) => (end - start) / s <= 5) ?? last(steps);
  const ticks = [];
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) ticks.push(t);
  return ticks;
}

function bytesUnit(max) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (i < units.length - 1 && max >= 1024 ** (i + 1)) i += 1;
  return { name: units[i], factor: 1024 ** i };
}

// ------------------------------------------------------------------------------------------ formatting

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });

function formatTick(value, step) {
  if (step >= 1000) return compact.format(value);
  const decimals = (String(Number(step.toPrecision(3))).split(".")[1] ?? "").length;
  return value.toFixed(decimals);
}

function formatValue(value, unit = "") {
  if (!Number.isFinite(value)) return "no data";
  const number = Math.abs(value) >= 10000 ? compact.format(value) : String(Number(value.toPrecision(3)));
  return unit ? `${number} ${unit}` : number;
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (Number.isFinite(values[i])) return values[i];
  }
  return null;
}

function formatClock(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  return [date.getHours(), date.getMinutes(), date.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

// ------------------------------------------------------------------------------------------ DOM helpers

function el(tag, attributes = {}, parent = null, namespace = null) {
  const node = namespace ? document.createElementNS(namespace, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  parent?.append(node);
  return node;
}

function swatch(color, dash) {
  const svg = el("svg", { class: "swatch", viewBox: "0 0 28 10", width: 28, height: 10 }, null, SVG_NS);
  const line = el("line", { x1: 1, x2: 27, y1: 5, y2: 5, stroke: color }, svg, SVG_NS);
  if (dash) line.setAttribute("stroke-dasharray", dash);
  return svg;
}

function barSwatch(color) {
  const svg = el("svg", { class: "swatch", viewBox: "0 0 28 10", width: 28, height: 10 }, null, SVG_NS);
  el("rect", { x: 8, y: 0, width: 12, height: 10, fill: color }, svg, SVG_NS);
  return svg;
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
