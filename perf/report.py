"""The benchmark's report: the issue's targets evaluated, the Markdown table and the p99-vs-throughput plot.

Input is the run's JSON report (perf/bench.py builds it); nothing here measures. A system's "max candidates/s"
counts only open-loop points with p99 <= P99_BOUND_MS and at most MAX_ERROR_FRACTION failed calls; a target that
cannot be evaluated (a system that did not run) is reported as such, never as a pass. Every system's "vs limit" is
its max candidates/s over the limit's: the simulated ideal one-core server of perf/limit_model.py on the same run's
traces, whose section of the report gives its inputs, per-point figures and the naive server's validation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

P99_BOUND_MS = 10.0
MAX_ERROR_FRACTION = 0.01  # a point with more failed calls than this does not count as within the bound


def finite(value: object) -> object:
    """JSON without NaN/inf (as null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# Issue 35's ads workload (auctions of 100-700 candidates, uniform): against the simulated ideal server, the naive
# server and PyTriton; and relevance on a Zipf query mix (its context-tower cache), against the naive server and its
# own engine-only ceiling.
ADS_MIX = "uniform:100-700"
ADS_OF_LIMIT, ADS_OF_NAIVE, ADS_OF_PYTRITON = 0.8, 3.0, 10.0
ZIPF_OF_NAIVE, ZIPF_OF_ENGINE = 3.0, 0.5
# Light load: adrank's p50 at the 10 % point over (the grpc++ echo's p50 there + direct ONNX Runtime paced alike).
LIGHT_LOAD_MARGIN_MS = 0.1


def targets(
    systems: dict[str, dict[str, object]],
    engine: dict[str, dict[str, object]],
    limits: dict[str, dict[str, object]] | None = None,
    settings: dict[str, object] | None = None,
) -> list[dict[str, object]]:
    """The issues' targets, each with its measured value and pass/fail (None: could not be evaluated). `limits`:
    the simulated ideal server per model; `settings`: the run's (its candidate and query mixes)."""
    rows: list[dict[str, object]] = []
    limits = limits or {}
    mix = str((settings or {}).get("mix", "lognormal"))
    queries = str((settings or {}).get("queries", "texts"))
    ads = mix == ADS_MIX

    def cap(name: str) -> float | None:
        system = systems.get(name)
        if not system or system["status"] != "ok":
            return None
        return system["max_candidates_per_s"]  # type: ignore[return-value]

    def add(target: str, value: float | None, threshold: float, unit: str, higher_is_better: bool = True) -> None:
        passed = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
        if value is not None and math.isinf(value):
            # The baseline met the bound at no point: any throughput of adrank's beats it, but no ratio
            # exists to print (and JSON has no infinity).
            target += " (the baseline met p99 <= 10 ms at no point)"
            value = None
        rows.append({"target": target, "value": value, "threshold": threshold, "unit": unit, "pass": passed})

    for model in ("ctr", "relevance"):
        if model not in engine:
            continue
        adrank = cap(f"adrank-{model}")
        ceiling = float(engine[model]["ceiling_candidates_per_s"])  # type: ignore[arg-type]
        naive = cap("naive" if model == "ctr" else f"naive-{model}")
        zipf = model == "relevance" and queries.startswith("zipf")
        suffix = "" if model == "ctr" or zipf else " (relevance, informational)"
        on = f" ({mix}{', ' + queries if model == 'relevance' and zipf else ''})"
        of_engine = ZIPF_OF_ENGINE if zipf else 0.9
        add(
            f"adrank-{model} / engine-only, candidates/s at p99 <= 10 ms{on}{suffix}",
            _ratio(adrank, ceiling),
            of_engine,
            "x",
        )
        of_naive = ZIPF_OF_NAIVE if zipf else ADS_OF_NAIVE if ads else 2.0
        add(
            f"adrank-{model} / naive, max candidates/s at p99 <= 10 ms{on}{suffix}",
            _ratio(adrank, naive),
            of_naive,
            "x",
        )
        limit = _limit_of(limits.get(model))
        if limit is not None:
            kind = "" if ads else " (informational: the issue's target is on the ads mix)"
            add(
                f"adrank-{model} / simulated ideal server, at p99 <= 10 ms{on}{kind}",
                _ratio(adrank, limit),
                ADS_OF_LIMIT,
                "x",
            )
        if model == "ctr":
            pytriton = systems.get("pytriton", {})
            if pytriton.get("status") == "ok":
                of_pytriton = ADS_OF_PYTRITON if ads else 4.0
                add(
                    f"adrank-ctr / PyTriton, max candidates/s at p99 <= 10 ms{on}",
                    _ratio(adrank, cap("pytriton")),
                    of_pytriton,
                    "x",
                )
        cache = (systems.get(f"adrank-{model}") or {}).get("context_cache")
        if cache:
            hit_ratio = cache.get("hit_ratio")  # type: ignore[attr-defined]
            add(f"(informational) adrank-{model} context cache hit ratio{on}", hit_ratio, 0.0, "", True)
        at10 = (systems.get(f"adrank-{model}") or {}).get("at_10pct")
        direct = _direct(engine[model])["p50_ms"]
        p50 = at10["latency_ms"]["p50"] if at10 else None  # type: ignore[index]
        delta = None if p50 is None else float(p50) - float(direct)
        add(f"adrank-{model} p50 at 10 % load - direct ORT p50{suffix}", delta, 0.3, "ms", higher_is_better=False)
        echo = (systems.get("grpc-echo") or {}).get("at_10pct") if model == "ctr" else None
        if echo:  # what a grpc.aio server and the generator alone take, no model
            floor = float(echo["latency_ms"]["p50"])  # type: ignore[index]
            add(
                "(informational) grpc-echo p50 at 10 % load: a grpc.aio server's floor, no model",
                floor,
                0.3,
                "ms",
                False,
            )
        echo_cpp = (systems.get("grpc-echo-cpp") or {}).get("at_10pct") if model == "ctr" else None
        if echo_cpp:  # a grpc++ server doing nothing: above 0.3 ms no C++ server on this machine meets the target
            floor = float(echo_cpp["latency_ms"]["p50"])  # type: ignore[index]
            add(
                "(informational) grpc-echo-cpp p50 at 10 % load: a grpc++ server's floor, no model",
                floor,
                0.3,
                "ms",
                False,
            )
            # What adrank adds beyond the transport's floor and the model's own time, both at the same light load.
            over = None if p50 is None else float(p50) - (floor + float(direct))
            add(
                f"adrank-{model} p50 at 10 % load - (grpc-echo-cpp p50 + direct ORT p50 paced alike)",
                over,
                LIGHT_LOAD_MARGIN_MS,
                "ms",
                False,
            )
    return rows


def _direct(engine_result: dict[str, object]) -> dict[str, float]:
    """The light-load reference: direct calls paced as the 10 % point's arrivals, else back to back."""
    return engine_result.get("direct_paced") or engine_result["direct"]  # type: ignore[return-value]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a / b if b > 0 else (math.inf if a > 0 else None)


def _fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, object]) -> str:
    systems: dict[str, dict] = report["systems"]  # type: ignore[assignment]
    engine: dict[str, dict] = report["engine_only"]  # type: ignore[assignment]
    lines = [
        f"# adrank benchmark {report['date']} ({report['git']['sha']}{' dirty' if report['git']['dirty'] else ''})",  # type: ignore[index]
        "",
        f"Mode `{report['mode']}`. Max candidates/s counts open-loop points with p99 <= {P99_BOUND_MS:g} ms and at most"
        f" {MAX_ERROR_FRACTION:.0%} failed calls. p50/p99 at 10 % load: the open-loop point offered 10 % of"
        " adrank's probed capacity for the same model (engine-only: `session.run` on each request alone, started at"
        " the same Poisson arrivals). vs limit: max candidates/s over the simulated ideal one-core server's on the"
        " run's own traces (the limit, below).",
        "",
        "| system | model | max candidates/s (p99 <= 10 ms) | p50 @10 % (ms) | p99 @10 % (ms) | vs engine-only"
        " | vs limit | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    limits: dict[str, dict] = report.get("limit") or {}  # type: ignore[assignment]
    for model, result in engine.items():
        direct = _direct(result)
        best = result["best"]
        lines.append(
            f"| engine-only | {model} | {_fmt(result['ceiling_candidates_per_s'], 0)} | {_fmt(direct['p50_ms'], 3)}"
            f" | {_fmt(direct['p99_ms'], 3)} | 1.00"
            f" | {_fmt(_ratio(result['ceiling_candidates_per_s'], _limit_of(limits.get(model))))}"
            f" | batch {best['batch_rows']}, {best['intra_op_threads']} thread |"
        )
        for name, system in systems.items():
            if system["model"] != model or name.startswith("engine-only"):
                continue
            if system["status"] != "ok":
                lines.append(f"| {name} | {model} | - | - | - | - | - | {system['status']} |")
                continue
            at10 = system.get("at_10pct") or {}
            latency = at10.get("latency_ms", {})
            notes = []
            if name == "grpc-echo":
                notes.append(
                    "floor: a grpc.aio server + the generator, empty replies, no model (one point: max is a"
                    " lower bound)"
                )
            elif name == "grpc-echo-cpp":
                notes.append(
                    "floor: a grpc++ server (perf/echo_server.cc) + the generator, empty replies (one point:"
                    " max is a lower bound)"
                )
            elif not system["max_candidates_per_s"]:
                notes.append("p99 > 10 ms (or > 1 % errors) at every point")
            server = at10.get("server_ms") or {}
            if "request" in server:  # where the light-load latency is: in the server, or around it
                parts = ", ".join(
                    f"{phase} {_fmt(server[phase]['p50'], 2)}/{_fmt(server[phase]['p99'], 2)}"
                    for phase in ("request", "queue", "compute")
                    if phase in server
                )
                notes.append(f"at 10 %, in the server p50/p99 ms: {parts}")
            if system["generator_saturated_points"]:
                notes.append(f"generator saturated at {system['generator_saturated_points']} point(s)")
            cpu = max((p.get("generator_cpu") or 0.0 for p in system["points"]), default=0.0)
            notes.append(f"generator CPU <= {cpu:.0%}")
            probe = system.get("probe")
            if probe:
                bound = " (generator-bound)" if (probe.get("generator_cpu") or 0.0) > 0.9 else ""
                notes.append(f"probe {_fmt(probe.get('candidates_per_s'), 0)} cand/s closed loop{bound}")
            lines.append(
                f"| {name} | {model} | {_fmt(system['max_candidates_per_s'], 0)} | {_fmt(latency.get('p50'), 3)}"
                f" | {_fmt(latency.get('p99'), 3)}"
                f" | {_fmt(_ratio(system['max_candidates_per_s'], result['ceiling_candidates_per_s']))}"
                f" | {_fmt(system.get('vs_limit'))} | {'; '.join(notes)} |"
            )
    lines += limit_section(report)
    lines += ["", "## Targets", "", "| target | measured | threshold | result |", "| --- | ---: | ---: | --- |"]
    for row in report["targets"]:  # type: ignore[attr-defined]
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[row["pass"]]
        sign = "<=" if row["unit"] == "ms" else ">="
        lines.append(
            f"| {row['target']} | {_fmt(row['value'], 3)} {row['unit']} | {sign} {row['threshold']:g} {row['unit']}"
            f" | {verdict} |"
        )
    machine = report["machine"]
    pinning = report["pinning"]
    lines += [
        "",
        "## How",
        "",
        f"- command: `{report['command']}` ({report['seconds']:.0f} s)",
        f"- machine: {machine['cpu_model']}, {machine['nproc']} cores, kernel {machine['kernel']},"  # type: ignore[index]
        f" Python {machine['python']}",  # type: ignore[index]
        f"- pinning: servers and engine-only `taskset -c {pinning['server_core']}`, load generator on core"  # type: ignore[index]
        f" {pinning['generator_core']} (`sched_setaffinity`); adrank `--workers {pinning['adrank_workers']}`",  # type: ignore[index]
        f"- load: open-loop Poisson arrivals, pre-serialized requests, candidates per request {_mix_text(report)}"
        " over real Criteo rows (ctr) and relevance texts; latency send -> reply",
        f"- load generator: {report.get('generator', 'grpc.aio (perf/loadgen.py)')}",
        "- generator saturation: a point is flagged when the generator's schedule lag p99 exceeds 5 ms, it sent"
        " < 95 % of its scheduled requests/s, or it used > 90 % of its core",
    ]
    return "\n".join(lines) + "\n"


def _mix_text(report: dict[str, object]) -> str:
    """The run's draws in words (perf/requests.py Mix and QueryMix labels, kept in the settings)."""
    settings: dict = report.get("settings") or {}  # type: ignore[assignment]
    mix, queries = settings.get("mix", "lognormal"), settings.get("queries", "texts")
    text = "lognormal (median 100, p99 ~1000, cap 2000)" if mix == "lognormal" else f"`{mix}`"
    if mix.startswith("uniform:100-700"):
        text += " (the ads workload: auctions of 100-700 candidates, uniform)"
    return text + ("" if queries == "texts" else f", relevance queries `{queries}` (Zipf over distinct queries)")


def _limit_of(limit: dict[str, object] | None) -> float | None:
    value = limit.get("limit_candidates_per_s") if limit else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def limit_section(report: dict[str, object]) -> list[str]:
    """The simulated ideal server per model (perf/limit_model.py): its limit, inputs, per-point figures on the
    measured traces, and the naive server's validation."""
    limits: dict[str, dict] = report.get("limit") or {}  # type: ignore[assignment]
    systems: dict[str, dict] = report["systems"]  # type: ignore[assignment]
    lines: list[str] = []
    for model, limit in limits.items():
        if "status" in limit:
            lines += ["", f"## The limit: an ideal one-core server ({model})", "", f"- {limit['status']}"]
            continue
        transport, curve, sweep = limit["transport"], limit["batch_curve"], limit["sweep"]
        shape = ", ".join(f"{r:,.0f}: {ms:.3f}" for r, ms in zip(curve["rows"], curve["ms"], strict=True))
        lines += [
            "",
            f"## The limit: an ideal one-core server ({model})",
            "",
            f"- limit: **{_fmt(limit['limit_candidates_per_s'], 0)} candidates/s** with p99 <= {P99_BOUND_MS:g} ms"
            f" ({len(sweep['points']) - sweep['drawn_points']} measured traces, {sweep['drawn_points']} drawn beyond"
            " them); best policy per trace, wins: "
            + ", ".join(f"{name} {count}" for name, count in sweep["policy_wins"].items()),
            f"- engine batch-time curve (rows: ms per run): {shape}; per request beyond the measured batches':"
            f" {_fmt(curve.get('per_request_ms'), 3)} ms",
            f"- transport ({transport['source']}): {_fmt(transport['per_call_us'], 1)} us CPU per call +"
            f" {_fmt(transport['per_byte_ns'], 3)} ns per byte, and the latency off the server's core of the echo's"
            f" {transport.get('latency_samples') or 'no'} calls at 10 % load less its CPU, one drawn per request"
            f" (p50 {_fmt(transport['latency_us'], 0)} us, p99 {_fmt(transport.get('latency_p99_us'), 0)} us)",
        ]
        for basis, validation in (limit.get("naive_validation") or {}).items():
            lines.append(
                f"- validation, the naive server simulated / measured on its own traces, its {basis} time per call"
                f" beyond the engine ({_fmt(validation['per_call_overhead_us'], 0)} us): max candidates/s"
                f" {_fmt(validation['max_candidates_ratio'])}, p50 median {_fmt(validation['p50_ratio_median'])},"
                f" p99 median {_fmt(validation['p99_ratio_median'])}"
            )
        lines += [
            "",
            "| system | point | offered req/s | measured p99 (ms) | ideal p50 (ms) | ideal p99 (ms) | ideal within"
            " 10 ms | ideal within deadline | ideal policy |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, system in systems.items():
            for point in system.get("points") or []:
                ideal = point.get("ideal") if system["model"] == model else None
                if not ideal:
                    continue
                lines.append(
                    f"| {name} | {point['label']} | {_fmt(point['target_rate'], 1)}"
                    f" | {_fmt(point['latency_ms']['p99'])} | {_fmt(ideal['p50_ms'])} | {_fmt(ideal['p99_ms'])}"
                    f" | {_fmt(ideal['within_bound_fraction'], 3)} | {_fmt(ideal['within_deadline_fraction'], 3)}"
                    f" | {ideal['policy']} |"
                )
    return lines


def plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    engine: dict[str, dict] = report["engine_only"]  # type: ignore[assignment]
    systems: dict[str, dict] = report["systems"]  # type: ignore[assignment]
    models = list(engine)
    figure, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        for name, system in systems.items():
            if system["model"] != model or not system["points"] or name.startswith("grpc-echo"):
                continue
            points = sorted(
                (p for p in system["points"] if p["latency_ms"]["p99"] is not None), key=lambda p: p["target_rate"]
            )
            x = [p["candidates_per_s"] for p in points]
            y = [p["latency_ms"]["p99"] for p in points]
            (line,) = axis.plot(x, y, marker="o", label=name)
            saturated = [(p["candidates_per_s"], p["latency_ms"]["p99"]) for p in points if p["generator_saturated"]]
            if saturated:
                axis.scatter(*zip(*saturated, strict=True), marker="x", s=80, color=line.get_color(), zorder=3)
        ceiling = engine[model]["ceiling_candidates_per_s"]
        axis.axvline(ceiling, color="black", linestyle="--", label=f"engine-only ceiling ({ceiling:,.0f}/s)")
        limit_entry = (report.get("limit") or {}).get(model) or {}  # type: ignore[attr-defined]
        ideal = sorted(
            (p["candidates_per_s"], p["p99_ms"])
            for p in limit_entry.get("sweep", {}).get("points", [])
            if p["candidates_per_s"] is not None and p["p99_ms"] is not None
        )
        if ideal:
            axis.plot(*zip(*ideal, strict=True), color="grey", marker=".", linewidth=1, label="simulated ideal server")
        limit = _limit_of(limit_entry)
        if limit:
            axis.axvline(limit, color="grey", linestyle="-.", label=f"its limit ({limit:,.0f}/s)")
        axis.axhline(P99_BOUND_MS, color="red", linestyle=":", label=f"p99 bound ({P99_BOUND_MS:g} ms)")
        axis.set_yscale("log")
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:,.0f}k"))
        axis.set_xlabel("achieved candidates/s (successful requests)")
        axis.set_ylabel("p99 latency (ms, log scale)")
        axis.set_title(f"{model}: p99 latency vs throughput (x: generator saturated)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(f"adrank {report['git']['sha']} {report['date']} ({report['mode']})")  # type: ignore[index]
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save(report: dict[str, object], stem: Path, text: str) -> None:
    """Writes a run's `<stem>.json` (the report) and `<stem>.md` (its Markdown `text`), and prints the text."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(text)
