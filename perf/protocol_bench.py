"""Rank against KServe v2's ModelInfer on the same server and the same requests, and Triton's perf_analyzer
beside the project's own sender: what the second protocol costs per call, and what an outside tool measures.

    .venv/bin/python perf/protocol_bench.py [--runs 5] [--duration 8] [--concurrency 16] [--frontends cpp,python]
        [--no-perf-analyzer] [--pytriton-venv /tmp/adrank-pytriton-venv]

One server per front end (`adrank serve --frontend F --workers 1`, pinned to core 0) answers, in alternating
runs, closed-loop Rank calls and ModelInfer calls carrying the same ctr requests (100 real Criteo rows each:
perf/requests.py `build` and `kserve_payloads`), sent from core 1 by the project's C++ sender
(perf/loadgen.py) with `--concurrency` callers for `--duration` seconds; then perf_analyzer (perf/
perf_analyzer.py, from the PyTriton environment) sends the same requests at the same concurrency. Per run:
OK calls/s, p50/p99 and, for the project's sender, the server's CPU per OK call (its /proc CPU time over the
run). The summary: each protocol's median CPU per call and their ratio (ModelInfer / Rank; the target is
<= 1.10), and perf_analyzer's median rate and p99 beside the sender's for ModelInfer. Results go to
perf/results/protocols-<date>-<sha>.md. Bounded: runs x (2 + perf_analyzer's trials) x front ends x
duration, the server stopped after its runs. Loopback only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf import requests as request_sets  # noqa: E402
from perf.baselines.pytriton import setup_venv  # noqa: E402
from perf.bench import ADRANK_READY, ServerProcess, git_info, running  # noqa: E402
from perf.loadgen import LoadGenerator, find_sender  # noqa: E402
from perf.perf_analyzer import PerfAnalyzer, write_input_data  # noqa: E402

SERVER_CORE, SENDER_CORE = 0, 1
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CANDIDATES = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--frontends", default="cpp,python")
    parser.add_argument("--no-perf-analyzer", action="store_true", help="only the project's own sender")
    parser.add_argument("--pytriton-venv", type=Path, default=setup_venv.DEFAULT_VENV)
    parser.add_argument("--out", type=Path, default=REPO / "perf" / "results")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {SENDER_CORE})
    requests = request_sets.build("ctr", 200, candidates=CANDIDATES)
    protocols = {
        "Rank": (requests.method, requests.payloads),
        "ModelInfer": (INFER_METHOD, request_sets.kserve_payloads(requests, "ctr")),
    }
    lines = [
        f"# Rank and KServe v2 ModelInfer, and perf_analyzer ({dt.date.today().isoformat()}, {git_info()['sha']})",
        "",
        f"Closed loop, {args.concurrency} callers, {args.duration:g} s a run, ctr requests of {CANDIDATES} real Criteo"
        " rows; server on core 0 (`--workers 1`), senders on core 1.",
        "",
        f"`{' '.join(['.venv/bin/python', 'perf/protocol_bench.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        "| front end | sender | protocol | run | OK calls/s | p50 (ms) | p99 (ms) | server CPU per OK call (µs) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for line in lines:
        print(line, flush=True)
    figures: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        analyzer, input_data = None, None
        if not args.no_perf_analyzer:
            import onnxruntime

            setup_venv.ensure(args.pytriton_venv, onnxruntime.__version__)
            analyzer = PerfAnalyzer.from_venv(args.pytriton_venv, work)
            input_data = write_input_data(requests, work / "input-data.json")
        for frontend in args.frontends.split(","):
            server = adrank_server(frontend, work)
            with running(server):
                target = server.wait_ready()
                for run in range(1, args.runs + 1):
                    order = list(protocols) if run % 2 else list(reversed(protocols))  # neither always goes first
                    for protocol in order:
                        method, payloads = protocols[protocol]
                        generator = LoadGenerator(target, method, payloads, requests.candidates, sender=find_sender())
                        before = server.cpu_s()
                        result = generator.closed_loop(args.concurrency, args.duration, 1_000_000)
                        cpu = server.cpu_s() - before
                        if result.errors:
                            raise RuntimeError(f"{frontend} {protocol}: errors {result.errors}")
                        figure = {
                            "rate": result.ok / result.elapsed_s,
                            "p50_ms": result.latency_ms["p50"],
                            "p99_ms": result.latency_ms["p99"],
                            "cpu_us": cpu / result.ok * 1e6,
                        }
                        lines.append(row(frontend, "adrank_loadgen", protocol, run, figure))
                        figures.setdefault((frontend, "adrank_loadgen", protocol), []).append(figure)
                    if analyzer is not None and input_data is not None:
                        window_ms = int(args.duration * 1000 / 2)
                        figure = analyzer.run(target, "ctr", input_data, args.concurrency, window_ms, work)
                        lines.append(row(frontend, "perf_analyzer", "ModelInfer", run, figure))
                        figures.setdefault((frontend, "perf_analyzer", "ModelInfer"), []).append(figure)
    tail = ["", *summary(figures, args.frontends.split(","))]
    for line in tail:
        print(line, flush=True)
    lines += tail
    path = args.out / f"protocols-{dt.date.today().isoformat()}-{git_info()['sha']}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


def adrank_server(frontend: str, work: Path) -> ServerProcess:
    adrank = str(Path(sys.executable).parent / "adrank")
    command = [adrank, "serve", "--repository", str(REPO / "models"), "--host", "127.0.0.1"]
    command += ["--grpc-port", "0", "--http-port", "0", "--workers", "1", "--frontend", frontend]
    return ServerProcess(frontend, command, ADRANK_READY, SERVER_CORE, work / f"{frontend}.log", None)


def row(frontend: str, sender: str, protocol: str, run: int, figure: dict[str, float]) -> str:
    cpu = f"{figure['cpu_us']:.1f}" if "cpu_us" in figure else "-"
    cells = [frontend, sender, protocol, run, f"{figure['rate']:,.0f}", f"{figure['p50_ms']:.2f}"]
    line = "| " + " | ".join(map(str, [*cells, f"{figure['p99_ms']:.2f}", cpu])) + " |"
    print(line, flush=True)
    return line


def summary(figures: dict[tuple[str, str, str], list[dict[str, float]]], frontends: list[str]) -> list[str]:
    def median(frontend: str, sender: str, protocol: str, key: str) -> float:
        return statistics.median(f[key] for f in figures[(frontend, sender, protocol)])

    out = []
    for frontend in frontends:
        ranked = median(frontend, "adrank_loadgen", "Rank", "cpu_us")
        inferred = median(frontend, "adrank_loadgen", "ModelInfer", "cpu_us")
        verdict = "PASS" if inferred <= 1.10 * ranked else "FAIL"
        out.append(
            f"- {frontend}: median server CPU per OK call: Rank {ranked:.1f} µs, ModelInfer {inferred:.1f} µs, "
            f"ratio {inferred / ranked:.3f} (target <= 1.10: {verdict})"
        )
        if (frontend, "perf_analyzer", "ModelInfer") in figures:
            theirs = [median(frontend, "perf_analyzer", "ModelInfer", k) for k in ("rate", "p99_ms")]
            ours = [median(frontend, "adrank_loadgen", "ModelInfer", k) for k in ("rate", "p99_ms")]
            out.append(
                f"- {frontend}: ModelInfer medians: perf_analyzer {theirs[0]:,.0f} calls/s, p99 {theirs[1]:.2f} ms;"
                f" adrank_loadgen {ours[0]:,.0f} calls/s, p99 {ours[1]:.2f} ms"
            )
    return out


if __name__ == "__main__":
    sys.exit(main())
