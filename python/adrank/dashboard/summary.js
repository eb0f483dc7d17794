// The summary row: per model, what its stable version does now — requests per second, the share of its
// requests that failed, and its request p99 against the model's latency budget (config.yaml's
// latency_budget_ms) — from /dashboard/data's `summary` (python/adrank/metrics/history.py). Every figure
// covers the window before the newest sample; a model without traffic in it shows "no data", never a zero.

import { el, formatValue } from "./charts.js";

export function renderSummary(container, rows) {
  container.replaceChildren();
  if (rows.length === 0) {
    el("p", { class: "summary-empty" }, container).textContent = "no model serves yet";
    return;
  }
  for (const row of rows) {
    const attributes = { class: "summary-card", "data-model": row.model, "data-version": row.version };
    const card = el("article", attributes, container);
    el("h2", { class: "summary-title" }, card).textContent = `${row.model} v${row.version}`;
    const figures = el("dl", { class: "summary-figures" }, card);
    addFigure(figures, "traffic", "Traffic", formatValue(row.requests_per_s, "req/s"));
    addFigure(figures, "error-ratio", "Error ratio", formatRatio(row.error_ratio));
    const p99 = addFigure(
      figures,
      "p99",
      "p99 / budget",
      `${formatValue(row.request_p99_ms, "ms")} / ${formatValue(row.latency_budget_ms, "ms")}`,
    );
    // "unknown" without traffic: no p99 to hold against the budget.
    p99.dataset.withinBudget = row.within_budget == null ? "unknown" : String(row.within_budget);
  }
}

function addFigure(list, name, term, value) {
  const item = el("div", { class: "summary-figure", "data-figure": name }, list);
  el("dt", {}, item).textContent = term;
  el("dd", {}, item).textContent = value;
  return item;
}

function formatRatio(ratio) {
  return Number.isFinite(ratio) ? `${Number((ratio * 100).toPrecision(3))} %` : "no data";
}
