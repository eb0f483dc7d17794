// The rollout panels: for each model with a canary or a shadow, the traffic each role takes (its share of
// routing keys, or of requests mirrored, and its requests per second) and each guardrail's latest figure
// against its limit — past the limit, the guardrail monitor rolls the candidate back. From /dashboard/data's
// `rollouts` (python/adrank/metrics/rollout_panel.py): the monitor's own figures, never recomputed here.

import { el, formatValue } from "./charts.js";

export function renderRollouts(container, panels) {
  container.replaceChildren();
  container.hidden = panels.length === 0;
  for (const panel of panels) {
    const section = el("section", { class: "panel rollout", "data-rollout": panel.model }, container);
    el("h2", {}, section).textContent = `Rollout ${panel.model}`;
    const tables = el("div", { class: "rollout-tables" }, section);
    trafficTable(tables, panel.roles);
    for (const guardrails of panel.guardrails) guardrailTable(tables, guardrails);
  }
}

function trafficTable(parent, roles) {
  const table = makeTable(parent, "rollout-traffic", "Traffic per role", ["role", "version", "share", "requests/s"]);
  for (const r of roles) {
    const share = r.role === "shadow" ? `mirrors ${formatValue(r.percent)} %` : `${formatValue(r.percent)} %`;
    row(table, { "data-role": r.role, "data-version": r.version }, [
      r.role,
      `v${r.version}`,
      share,
      formatValue(r.requests_per_s, "req/s"),
    ]);
  }
}

function guardrailTable(parent, g) {
  const caption = `Guardrails: ${g.role} v${g.version} vs stable, ${formatValue(g.window_s)} s window`;
  const table = makeTable(parent, "guardrails", caption, ["guardrail", "figure", "limit", "state"]);
  table.dataset.role = g.role;
  table.dataset.version = String(g.version);
  table.dataset.judged = String(g.judged);
  for (const check of g.checks) {
    const tr = row(table, { "data-guardrail": check.name, "data-breached": String(check.breached) }, [
      check.label,
      check.figure == null ? "no data" : formatValue(check.figure),
      `≤ ${formatValue(check.limit)}`,
      stateOf(g, check),
    ]);
    tr.children[1].classList.add("figure");
    tr.children[2].classList.add("limit");
  }
}

function stateOf(g, check) {
  if (!g.enabled) return "off";
  if (!g.judged) return `waiting for ${g.min_requests} requests`;
  if (check.breached == null) return "no data";
  return check.breached ? "past the limit" : "within";
}

function makeTable(parent, kind, caption, headings) {
  const table = el("table", { class: `rollout-table ${kind}` }, parent);
  el("caption", {}, table).textContent = caption;
  const head = el("tr", {}, el("thead", {}, table));
  for (const heading of headings) el("th", { scope: "col" }, head).textContent = heading;
  el("tbody", {}, table);
  return table;
}

function row(table, attributes, cells) {
  const tr = el("tr", attributes, table.querySelector("tbody"));
  for (const text of cells) el("td", {}, tr).textContent = text;
  return tr;
}
