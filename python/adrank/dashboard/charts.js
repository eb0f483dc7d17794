// The dashboard's charts, drawn as plain SVG: line charts over time and the batch-size bars, their axes,
// scales, legends and number formats. dashboard.js lays out the page and hands each chart its series.

export const SVG_NS = "http://www.w3.org/2000/svg";

// Chart geometry in SVG user units; each SVG scales to its box through its viewBox.
export const WIDTH = 420;
export const HEIGHT = 200;
const MARGIN = { top: 12, right: 28, bottom: 38, left: 60 }; // right: room for half a clock label

const last = (array) => array[array.length - 1];

// --------------------------------------------------------------------------------------------- charts

export function drawLineChart(chart, lines, domain, unit) {
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
  renderLegend(chart, lines, (line) => legendValue(line, unit));
}

// The figure a legend shows for a line: the series' `current` figure where it gives one (a model version's;
// null there: no traffic in the window), nothing for a version that no longer serves (`serving` false: its
// last figures are history, not what it does now), else the line's newest value (the memory pool's).
function legendValue(line, unit) {
  if (line.serving === false) return "";
  return formatValue("current" in line ? line.current : lastValue(line.values), unit);
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

export function drawBarChart(chart, series, spec, styleOf) {
  const svg = chart.querySelector("svg");
  svg.replaceChildren();
  const groups = series
    .filter((s) => Array.isArray(s.batch_rows?.counts))
    .map((s) => ({
      model: s.model,
      version: s.version,
      ...styleOf(s),
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

export function bytesUnit(max) {
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

export function formatValue(value, unit = "") {
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

export function formatClock(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  return [date.getHours(), date.getMinutes(), date.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

// ------------------------------------------------------------------------------------------ DOM helpers

// A chart's skeleton in `container`, made once: its title with the unit, the SVG, the legend. `model`: the
// model it belongs to, or null for a server-wide chart.
export function ensureChart(container, spec, model) {
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

export function el(tag, attributes = {}, parent = null, namespace = null) {
  const node = namespace ? document.createElementNS(namespace, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  parent?.append(node);
  return node;
}

export function swatch(color, dash) {
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

