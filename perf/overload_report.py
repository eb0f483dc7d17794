"""The overload benchmark's report: the issue's targets evaluated, the Markdown table and the goodput plot.

Input is the run's JSON report (perf/overload_bench.py builds it); nothing here measures. What is computed here
from the records, so that it can be checked apart from any server:

- the bound a refusal's cost implies: a refused call still costs the transport's CPU on the server's core, so
  at `refusals/s` refusals of `c` CPU seconds each the core has `1 - refusals/s * c` of itself left for
  answers: bound = saturation * (1 - refusals/s * c); the goodput target is >= GOODPUT_OF_BOUND of it;
- recovery: the light probes sent after the load stopped, in windows of `window_s` by send time; the server
  has recovered at the end of the first window whose p50 is within RECOVERY_FACTOR of the idle p50 and from
  whose start on the p50 of all the probes is too (a failed probe counts as infinitely slow; resolution: one
  window);
- RSS bounded: the peak RSS in the second half of a load's samples over the peak in its first half; a queue
  or a leak that grows with the overload grows past RSS_GROWTH_LIMIT, a bounded one levels off;
- a load measured several times: the run of median goodput among those whose generator kept up is the load's
  figure (`median_point`); a run whose generator fell behind did not offer the load it was asked to, so it is no
  result, and a load with no run that kept up is reported as such and its targets are not evaluated.

A target that cannot be evaluated (a system or phase that did not run) is reported as such, never as a pass.
Targets apply to adrank; the naive baseline is measured under the same loads for comparison only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GOODPUT_OF_BOUND = 0.9
# Goodput as a fraction of saturation, whatever refusals cost, at each multiple of saturation offered.
GOODPUT_OF_SATURATION = {1.5: 0.80, 2.0: 0.65}
RECOVERY_LIMIT_S = 1.0
RECOVERY_FACTOR = 1.5
RSS_GROWTH_LIMIT = 1.10
LIGHT_OK_FRACTION = 0.95


def refusal_bound(saturation: float, refusals_per_s: float, cpu_per_refusal_s: float) -> float:
    """Answers/s the core can still give while refusing `refusals_per_s` calls of `cpu_per_refusal_s` each."""
    return max(0.0, saturation * (1.0 - refusals_per_s * cpu_per_refusal_s))


def probe_windows(
    sent_at: np.ndarray, latency_s: np.ndarray, ok: np.ndarray, stop_at: float, window_s: float
) -> list[tuple[float, float, int]]:
    """(window start after `stop_at` in s, p50 in s, probes) of the probes sent from `stop_at` on, in order.

    `sent_at` are the probes' send times on the same clock as `stop_at`; windows without a probe are left out, and
    a failed probe (deadline, refusal) counts as infinitely slow: it is no sign of recovery.
    """
    after = sent_at >= stop_at
    slow = np.where(ok, latency_s, np.inf)[after]
    index = np.floor((sent_at[after] - stop_at) / window_s).astype(np.int64)
    return [
        (float(w * window_s), float(np.median(slow[index == w])), int((index == w).sum()))
        for w in sorted(set(index.tolist()))
    ]


def recovery_time(
    sent_at: np.ndarray,
    latency_s: np.ndarray,
    ok: np.ndarray,
    stop_at: float,
    idle_p50_s: float,
    window_s: float,
    factor: float = RECOVERY_FACTOR,
) -> float | None:
    """Seconds after `stop_at` until the probes are back to normal (None: not within the probes' time).

    Normal: within `factor` x `idle_p50_s`. The answer is the end of the first window (of `window_s`, by send time)
    whose p50 is normal and from whose start on the p50 of all the probes is normal too: a lucky window amid a
    backlog does not count, and one slow window later (a neighbour's process on the core) does not undo a recovery.
    `sent_at` are on `stop_at`'s clock; a failed probe (deadline, refusal) counts as infinitely slow.
    """
    after = sent_at >= stop_at
    order = np.argsort(sent_at[after], kind="stable")
    times = sent_at[after][order]
    slow = np.where(ok, latency_s, np.inf)[after][order]
    index = np.floor((times - stop_at) / window_s).astype(np.int64)
    limit = factor * idle_p50_s
    for w in sorted(set(index.tolist())):
        first = int(np.searchsorted(index, w))
        if np.median(slow[index == w]) <= limit and np.median(slow[first:]) <= limit:
            return (w + 1) * window_s
    return None


def rss_growth(samples: Sequence[tuple[float, int]]) -> float | None:
    """Peak RSS of the second half of `samples` ((time, bytes), in time order) over the first half's peak."""
    if len(samples) < 4:
        return None
    half = len(samples) // 2
    first = max(rss for _, rss in samples[:half])
    return max(rss for _, rss in samples[half:]) / first if first > 0 else None


def median_point(runs: Sequence[dict[str, object]]) -> dict[str, object]:
    """The figure of one load measured `len(runs)` times (in order, re-runs included): the run of median goodput
    among the runs whose generator kept up (the lower median of an even count), with every run summarised under
    `repeats`; with no such run, the last run marked `generator_fell_behind`."""
    if not runs:
        raise ValueError("median_point needs at least one run of the load")
    kept = [run for run in runs if not run["run"]["generator_saturated"]]  # type: ignore[index]
    if kept:
        ordered = sorted(kept, key=lambda run: float(run["goodput"]))  # type: ignore[arg-type]
        point = dict(ordered[(len(ordered) - 1) // 2], generator_fell_behind=False)
    else:
        point = dict(runs[-1], generator_fell_behind=True)
    point["repeats"] = [
        {
            "goodput": run["goodput"],
            "ok_p99_ms": run["ok_latency_ms"]["p99"],  # type: ignore[index]
            "connections": run.get("connections"),
            "generator_saturated": run["run"]["generator_saturated"],  # type: ignore[index]
        }
        for run in runs
    ]
    point["kept_runs"] = len(kept)
    return point


def _row(target: str, value: float | None, threshold: float, unit: str, higher_is_better: bool) -> dict[str, object]:
    if value is not None and math.isnan(value):  # e.g. the p99 of no OK answer: not measured
        value = None
    passed = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    return {
        "target": target,
        "value": value,
        "threshold": threshold,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "pass": passed,
    }


def targets(report: dict[str, object]) -> list[dict[str, object]]:
    """The issue's targets for adrank, each with its measured value and pass/fail (None: not evaluated)."""
    adrank: dict = report["systems"].get("adrank") or {}  # type: ignore[attr-defined]
    deadline_ms = float(report["deadline_ms"])  # type: ignore[arg-type]
    loads = {round(float(load["multiple"]), 3): load for load in adrank.get("loads", [])}
    rows: list[dict[str, object]] = []
    for multiple, of_saturation in GOODPUT_OF_SATURATION.items():
        load = loads.get(multiple)
        name = f"{multiple:g}x saturation"
        if load and load.get("generator_fell_behind"):  # no run offered the load: nothing to evaluate
            load, name = None, f"{name} (the generator fell behind in every run: no result)"
        goodput = load["goodput"] if load else None
        rows.append(
            _row(f"{name}: goodput / bound", _ratio(goodput, load and load["bound"]), GOODPUT_OF_BOUND, "x", True)
        )
        saturation = (adrank.get("saturation") or {}).get("rate")
        rows.append(_row(f"{name}: goodput / saturation", _ratio(goodput, saturation), of_saturation, "x", True))
        p99 = load["ok_latency_ms"]["p99"] if load else None
        rows.append(_row(f"{name}: p99 of the OK answers", p99, deadline_ms, "ms", False))
        rows.append(
            _row(
                f"{name}: RSS peak, second half / first half", load and load["rss_growth"], RSS_GROWTH_LIMIT, "x", False
            )
        )
        recovery = load["recovery"]["seconds"] if load else None
        row = _row(f"{name}: recovery to normal latency after the load stops", recovery, RECOVERY_LIMIT_S, "s", False)
        if load and recovery is None:  # measured, and not back to normal within the probes' time: a fail
            row.update(target=f"{row['target']} (not back to normal while probed)", value=None, **{"pass": False})
        rows.append(row)
    # A run cut short for another reason than the server exiting did not show that it never crashes.
    crashes = adrank.get("crashes") if adrank.get("status") == "ok" or adrank.get("crashes") else None
    rows.append(_row("server crashes over the run", crashes, 0, "", False))
    tenants = adrank.get("tenants") or {}
    light = tenants.get("light")
    rows.append(
        _row(
            "tenants: light tenant's OK fraction, heavy keeping 32 x 2048 rows in flight",
            light and light["ok_fraction"],
            LIGHT_OK_FRACTION,
            "x",
            True,
        )
    )
    rows.append(
        _row(
            "tenants: light tenant's p99 of the OK answers",
            light and light["latency_ms"]["p99"],
            deadline_ms,
            "ms",
            False,
        )
    )
    return rows


def _repeats(load: dict[str, object]) -> str:
    """'median of 3 runs (goodput a / b / c req/s); 1 re-run: the generator fell behind', from `median_point`."""
    repeats: list[dict] = load.get("repeats") or []  # type: ignore[assignment]
    if len(repeats) <= 1:
        return "one run"
    goodputs = " / ".join(_fmt(r["goodput"], 0) for r in repeats if not r["generator_saturated"])
    text = f"median of {load['kept_runs']} runs (goodput {goodputs or '-'} req/s)"
    reruns = sum(1 for r in repeats if r["generator_saturated"])
    return text + (f"; {reruns} re-run: the generator fell behind" if reruns else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b if b > 0 else None


def _fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _mb(value: object) -> str:
    return "-" if value is None else f"{float(value) / 2**20:,.0f}"  # type: ignore[arg-type]


def _codes(fractions: dict[str, float]) -> str:
    return ", ".join(f"{code} {share:.1%}" for code, share in sorted(fractions.items(), key=lambda kv: -kv[1]))


def markdown(report: dict[str, object]) -> str:
    systems: dict[str, dict] = report["systems"]  # type: ignore[assignment]
    git: dict = report["git"]  # type: ignore[assignment]
    deadline = report["deadline_ms"]
    lines = [
        f"# adrank overload benchmark {report['date']} ({git['sha']}{' dirty' if git['dirty'] else ''})",
        "",
        f"Mode `{report['mode']}`. Open-loop Poisson arrivals of {report['candidates']}-candidate ctr requests with"
        f" {deadline:g} ms deadlines at multiples of adrank's closed-loop saturation; the naive baseline gets the"
        " same offered rates. Goodput: OK answers/s. Bound: saturation x (1 - refusals/s x CPU per refusal), with"
        " refusals/s the calls of the run not answered OK.",
        "",
        "| system | saturation (req/s, closed loop) | CPU per refusal (µs) | idle probe p50 (ms) | RSS at start (MB) "
        "| exit | notes |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, system in systems.items():
        if not system.get("saturation"):
            lines.append(f"| {name} | - | - | - | - | - | {system['status']} |")
            continue
        refusal = system.get("refusal") or {}
        probe = system.get("idle_probe") or {}
        per = refusal.get("cpu_per_refusal_s")
        notes = [system["status"]] if system["status"] != "ok" else []
        if refusal:
            notes.append(f"refusals: {_codes(refusal['fractions'])}")
        lines.append(
            f"| {name} | {_fmt(system['saturation']['rate'], 0)} | {_fmt(None if per is None else per * 1e6, 1)}"
            f" | {_fmt(probe.get('p50_ms'), 3)} | {_mb(system.get('rss_at_start'))} | {system.get('exit_code')}"
            f" | {'; '.join(notes)} |"
        )
    lines += [
        "",
        "## Loads",
        "",
        "| system | load | offered (req/s) | s | goodput (req/s) | / saturation | bound (req/s) | / bound"
        " | statuses | OK p50 / p99 (ms) | server CPU (cores) | RSS before / peak / after (MB) | RSS growth"
        " | recovery (s) | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, system in systems.items():
        saturation = (system.get("saturation") or {}).get("rate")
        for load in system.get("loads", []):
            latency = load["ok_latency_ms"]
            rss = load["rss"]
            recovery = load["recovery"]
            notes = list(load["run"]["notes"])
            if load["run"]["generator_saturated"]:
                notes.insert(0, "GENERATOR SATURATED: no result")
            notes.append(_repeats(load))
            if recovery.get("note"):
                notes.append(recovery["note"])
            seconds = recovery["seconds"]
            lines.append(
                f"| {name} | {load['multiple']:g}x | {_fmt(load['offered_rate'], 0)} | {load['seconds']:g}"
                f" | {_fmt(load['goodput'], 0)} | {_fmt(_ratio(load['goodput'], saturation))}"
                f" | {_fmt(load['bound'], 0)} | {_fmt(_ratio(load['goodput'], load['bound']))}"
                f" | {_codes(load['fractions'])} | {_fmt(latency['p50'])} / {_fmt(latency['p99'])}"
                f" | {_fmt(load['server_cpu'])} | {_mb(rss['before'])} / {_mb(rss['peak'])} / {_mb(rss['after'])}"
                f" | {_fmt(load['rss_growth'])} | {_fmt(math.inf if seconds is None else seconds, 1)}"
                f" | {'; '.join(notes)} |"
            )
    tenants = (systems.get("adrank") or {}).get("tenants")
    if tenants:
        light, heavy = tenants["light"], tenants["heavy"]
        lines += [
            "",
            "## Tenants",
            "",
            f"A heavy tenant (`x-adrank-tenant: heavy`) keeps {heavy['in_flight']} requests of {heavy['rows']} rows"
            f" in flight (closed loop, {heavy['timeout_ms']:g} ms deadlines) while a light tenant"
            f" (`x-adrank-tenant: light`) sends {light['rate']:g} req/s open loop with {deadline:g} ms deadlines"
            f" for {light['seconds']:g} s.",
            "",
            "| tenant | sent | OK fraction | OK p50 / p99 (ms) | answers/s | statuses |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for tenant in (light, heavy):
            latency = tenant["latency_ms"]
            lines.append(
                f"| {tenant['tenant']} | {tenant['sent']} | {_fmt(tenant['ok_fraction'], 3)}"
                f" | {_fmt(latency['p50'])} / {_fmt(latency['p99'])} | {_fmt(tenant['ok_rate'], 0)}"
                f" | {_codes(tenant['fractions'])} |"
            )
        if not heavy["covered_light_run"]:
            lines += ["", "The heavy tenant stopped sending before the light one did: the scenario did not hold."]
    lines += [
        "",
        "## Targets (adrank)",
        "",
        "| target | measured | threshold | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in report["targets"]:  # type: ignore[attr-defined]
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[row["pass"]]
        sign = ">=" if row["higher_is_better"] else "<="
        lines.append(
            f"| {row['target']} | {_fmt(row['value'], 3)} {row['unit']} | {sign} {row['threshold']:g} {row['unit']}"
            f" | {verdict} |"
        )
    machine: dict = report["machine"]  # type: ignore[assignment]
    pinning: dict = report["pinning"]  # type: ignore[assignment]
    lines += [
        "",
        "## How",
        "",
        f"- command: `{report['command']}` ({report['seconds']:.0f} s)",
        f"- machine: {machine['cpu_model']}, {machine['nproc']} cores, kernel {machine['kernel']},"
        f" load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}",
        f"- pinning: servers `taskset -c {pinning['server_core']}`, this process and the load generator on core"
        f" {pinning['generator_core']}; adrank `--workers {pinning['adrank_workers']}`",
        f"- load generator: {report['generator']}",
        "- saturation: closed loop, 16 callers; CPU per refusal: the server's CPU time (/proc/PID/stat) over a closed"
        " loop of requests naming a model the server does not serve (refused at once), less its idle CPU rate,"
        " over the refusals",
        f"- recovery: light probes (one {report['candidates']}-candidate request, 1 s deadline) from shortly before"
        f" the load's last send; windows of {report['settings']['recovery_window_s']:g} s; recovered at the end of"  # type: ignore[index]
        f" the first window whose p50, and the p50 of all the probes from it on, are within {RECOVERY_FACTOR:g}x the"
        " idle probes' p50",
        "- RSS: /proc/PID/status VmRSS sampled during each load; growth = second half's peak / first half's peak",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, object], path: Path) -> None:
    """Goodput against offered load per system, with each system's ideal min(offered, saturation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems: dict[str, dict] = report["systems"]  # type: ignore[assignment]
    figure, axis = plt.subplots(figsize=(8, 5.5))
    top = 0.0
    for name, system in systems.items():
        loads = sorted(system.get("loads", []), key=lambda load: load["offered_rate"])
        if not loads:
            continue
        offered = [load["offered_rate"] for load in loads]
        (line,) = axis.plot(offered, [load["goodput"] for load in loads], marker="o", label=f"{name} goodput")
        top = max(top, *offered)
        saturation = (system.get("saturation") or {}).get("rate")
        if saturation:
            xs = [0.0, saturation, max(offered)]
            axis.plot(
                xs,
                [min(x, saturation) for x in xs],
                linestyle="--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{name} ideal min(offered, {saturation:,.0f})",
            )
        if name == "adrank":
            bounds = [(load["offered_rate"], load["bound"]) for load in loads if load["bound"] is not None]
            if bounds:
                axis.scatter(
                    *zip(*bounds, strict=True),
                    marker="v",
                    color=line.get_color(),
                    zorder=3,
                    label="adrank refusal bound",
                )
    axis.set_xlim(0, top * 1.05 if top else 1)
    axis.set_ylim(bottom=0)
    axis.set_xlabel("offered load (requests/s, open loop)")
    axis.set_ylabel("goodput (OK answers/s)")
    axis.set_title(f"goodput vs offered load, {report['deadline_ms']:g} ms deadlines")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    git: dict = report["git"]  # type: ignore[assignment]
    figure.suptitle(f"adrank overload {git['sha']} {report['date']} ({report['mode']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
