"""Observability: what the server did, for Prometheus (`/metrics`) and the live dashboard (`/dashboard`).

- `sample`: one bulk read of the core's counters and histograms (per version, per queue, the memory
  pool, the front end's calls) — the accounting itself is done in C++ without the GIL;
- `exporter`: the Prometheus collector over a fresh sample at each scrape;
- `history`: samples kept over the last minutes, and the dashboard's windows computed from them;
- `calls`: the front ends' answers by status code (unknown models included), for the dashboard's chart;
- `rollout_panel`: the dashboard's rollout panel, laid out from the guardrail monitor's latest figures;
- `histogram`: quantiles and Prometheus buckets from the core's bucket counts;
- `http`: the HTTP pages (`/metrics`, `/dashboard`, `/dashboard/data`).
"""
