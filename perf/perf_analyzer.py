"""perf_analyzer, Triton's own load generator, as an outside caller of adrank's KServe v2 gRPC endpoint.

The binary is the one inside the tritonclient 2.51.0 wheel (later wheels ship none, or need a newer glibc);
it needs libb64.so.0d and libcudart.so.12, which the nvidia-pytriton wheel carries (../shared/PEERS.md). Both
wheels are in the throwaway PyTriton environment the serving bench already makes
(perf/baselines/pytriton/setup_venv.py), so this takes the binary and the libraries from there.

A run: closed loop at one concurrency (perf_analyzer's own measurement: time windows until stable, at most
`max_trials`), on the given requests as perf_analyzer input data (real rows, each request its own shape),
with the candidate dims given to it since the model's config says -1 (max_batch_size 0: infer_metadata.h).
What it reports: inferences/s and its client-side p50/p99 latency. Bounded: `max_trials` windows, and a
timeout.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from perf.requests import RequestSet


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    library_dir: Path

    @staticmethod
    def from_venv(venv: Path, work: Path) -> PerfAnalyzer:
        """The binary of the PyTriton environment, with a folder of the libraries it loads by their sonames."""
        binary = venv / "bin" / "perf_analyzer"
        if not binary.is_file():
            raise FileNotFoundError(f"{binary} is missing: the tritonclient 2.51.0 wheel puts it there")
        (bundled,) = venv.glob("lib/python3*/site-packages/nvidia_pytriton.libs")
        library_dir = work / "perf-analyzer-libs"
        library_dir.mkdir(parents=True, exist_ok=True)
        for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
            (found,) = bundled.glob(pattern)
            link = library_dir / soname
            link.unlink(missing_ok=True)
            link.symlink_to(found)
        return PerfAnalyzer(binary, library_dir)

    def run(
        self,
        target: str,
        model: str,
        input_data: Path,
        concurrency: int,
        window_ms: int,
        work: Path,
        max_trials: int = 4,
    ) -> dict[str, float]:
        report = work / f"perf-analyzer-{model}-{concurrency}.csv"
        command = [str(self.binary), "-m", model, "-u", target, "-i", "grpc", "--input-data", str(input_data)]
        command += ["--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms)]
        command += ["--max-trials", str(max_trials), "--stability-percentage", "20", "-f", str(report)]
        for name, shape in shapes(input_data).items():
            command += ["--shape", f"{name}:{','.join(map(str, shape))}"]
        timeout_s = 30 + 3 * max_trials * window_ms / 1000
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={"LD_LIBRARY_PATH": str(self.library_dir), "PATH": "/usr/bin:/bin"},
            check=False,
        )
        if done.returncode != 0 or not report.is_file():
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {(done.stdout + done.stderr)[-800:]}")
        with report.open() as f:
            (row,) = list(csv.DictReader(f))
        return {
            "rate": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3,
        }


def write_input_data(requests: RequestSet, path: Path) -> Path:
    """The requests as perf_analyzer input data: one entry per request, each tensor's content and shape."""
    entries = []
    for feeds in requests.feeds:
        entries.append(
            {name: {"content": rows.ravel().tolist(), "shape": list(rows.shape)} for name, rows in feeds.items()}
        )
    path.write_text(json.dumps({"data": entries}))
    return path


def shapes(input_data: Path) -> dict[str, list[int]]:
    """The first request's shapes: what perf_analyzer is told for the model's -1 dims (each entry's own
    shape is what it sends)."""
    first = json.loads(input_data.read_text())["data"][0]
    return {name: tensor["shape"] for name, tensor in first.items()}
