// Calls by status code: what the front ends answered per second, by gRPC code — every Rank and KServe
// inference call, refused or not — and, dashed, the requests that named a model no version serves (among the
// NOT_FOUND calls; no model's panel can show them). From /dashboard/data's `calls`
// (python/adrank/metrics/calls.py); a code appears once it has been answered within the history shown.

import { drawLineChart, ensureChart } from "./charts.js";

const CALLS_CHART = { id: "calls-by-code", title: "Calls by status code", unit: "calls/s" };

// Okabe-Ito, as the other charts: success green, the caller's mistakes warm, overload and server errors apart.
const CODE_COLORS = {
  OK: "#009E73",
  INVALID_ARGUMENT: "#E69F00",
  NOT_FOUND: "#0072B2",
  RESOURCE_EXHAUSTED: "#CC79A7",
  DEADLINE_EXCEEDED: "#D55E00",
  UNAVAILABLE: "#56B4E9",
  CANCELLED: "#999999",
};
const OTHER_COLORS = ["#882255", "#332288", "#44AA99", "#AA4499", "#117733", "#555555"];
const UNKNOWN_MODEL_DASH = "5 3";

export function renderCalls(container, calls, domain) {
  const chart = ensureChart(container, CALLS_CHART, null);
  const t = calls?.t ?? [];
  const lines = Object.entries(calls?.codes ?? {}).map(([code, values], i) => ({
    metric: { key: code },
    t,
    values,
    label: code,
    color: CODE_COLORS[code] ?? OTHER_COLORS[i % OTHER_COLORS.length],
    dash: "",
  }));
  if (calls) {
    lines.push({
      metric: { key: "unknown_model" },
      t,
      values: calls.unknown_model ?? [],
      label: "NOT_FOUND: unknown model",
      color: CODE_COLORS.NOT_FOUND,
      dash: UNKNOWN_MODEL_DASH,
    });
  }
  drawLineChart(chart, lines, domain, CALLS_CHART.unit);
}
