"""The dashboard's rollout panel: per model with a canary or a shadow, the traffic each role takes and each
guardrail's latest figure against its limit.

Contract: `rollout_panels` lays out what a sample already holds — the routes' shares (sample.Traffic), each
routed version's requests per second over the window (history.py's figures), the guardrail monitor's latest
verdict on each candidate and the model's guardrail limits (GuardrailPolicy) — and computes no guardrail
itself: the figures are the monitor's, taken from its lock-free mapping, never recomputed here nor under the
model manager's lock (which a load holds for seconds). A candidate the monitor has not judged yet (fewer
than `min_requests` in its window) has its limits and null figures. A figure is past its limit exactly when
the monitor would roll the candidate back for it (`figure > limit`, rollout/guardrails.py: evaluate).

Pure functions; thread-safety is the caller's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adrank.metrics.sample import Traffic
from adrank.rollout.guardrails import Verdict
from adrank.rollout.policy import GuardrailPolicy

ROLE_ORDER = {"stable": 0, "canary": 1, "shadow": 2}


def _finite(value: Any) -> float | None:
    """JSON-ready: NaN (no figure: e.g. the candidate answered nothing OK) becomes null."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def guardrail_checks(role: str, verdict: Verdict | None, policy: GuardrailPolicy) -> list[dict[str, Any]]:
    """The three guardrails of one candidate: name, label, figure (None before a verdict), limit, breached."""
    figures = verdict.figures if verdict is not None else {}
    rates = figures.get("error_rate", {})
    excess = round(rates[role] - rates["stable"], 5) if role in rates and "stable" in rates else None
    latency = figures.get("latency", "compute" if role == "shadow" else "queue+compute")
    checks = [
        ("latency", f"p99 latency / stable's ({latency})", figures.get("p99_ratio"), policy.max_latency_ratio),
        ("error_rate", "error rate - stable's", excess, policy.max_error_rate),
        ("psi", "score PSI vs stable", figures.get("psi"), policy.max_psi),
    ]
    out = []
    for name, label, raw, limit in checks:
        figure = _finite(raw)
        breached = figure > limit if figure is not None else None
        out.append({"name": name, "label": label, "figure": figure, "limit": limit, "breached": breached})
    return out


def rollout_panels(
    traffic: list[Traffic],
    verdicts: list[tuple[str, int, str, Verdict]],
    policies: Mapping[str, GuardrailPolicy],
    requests_per_s: Mapping[tuple[str, int], float | None],
) -> list[dict[str, Any]]:
    """One panel per model whose route has a canary or a shadow, by model name."""
    latest = {(model, version, role): verdict for model, version, role, verdict in verdicts}
    models = sorted({t.model for t in traffic if t.role != "stable"})
    panels = []
    for model in models:
        routed = sorted((t for t in traffic if t.model == model), key=lambda t: ROLE_ORDER.get(t.role, 9))
        policy = policies.get(model, GuardrailPolicy())
        roles = [
            {
                "role": t.role,
                "version": t.version,
                "percent": t.percent,
                "requests_per_s": requests_per_s.get((model, t.version)),
            }
            for t in routed
        ]
        guardrails = []
        for t in routed:
            if t.role == "stable":
                continue
            verdict = latest.get((model, t.version, t.role))
            guardrails.append(
                {
                    "role": t.role,
                    "version": t.version,
                    "enabled": policy.enabled,
                    "window_s": policy.window_s,
                    "min_requests": policy.min_requests,
                    "judged": verdict is not None,
                    "window_requests": verdict.figures.get("window_requests") if verdict is not None else None,
                    "checks": guardrail_checks(t.role, verdict, policy),
                }
            )
        panels.append({"model": model, "roles": roles, "guardrails": guardrails})
    return panels
