"""The validation gates a new model version passes before `adrank publish` makes it visible.

Contract, in the order publish() runs them (each refusal is a PublishError naming the file, the tensor or
the figure):
1. `check_onnx`: the ONNX checker, full check (types and shapes inferred through the graph); a corrupt file
   stops here. Returns the file's sha256, taken before the check, so that the bytes published can be compared.
2. `check_integer_kernels`: no integer MatMul/Conv node, in any graph or subgraph, may multiply 8-bit
   activations by int8 weights that use more than 7 bits (repository/integer_kernels.py): on CPUs without VNNI
   (AVX2 only) ONNX Runtime adds pairs of those products in 16 bits with saturation, and the model would score
   differently there than on VNNI CPUs. The refusal names the first such node (graph path, node, op, weight
   tensor and its range), the count, and the fix: re-quantize with `quantize_dynamic(..., reduce_range=True)`
   (7-bit weights) or `weight_type=QuantType.QUInt8` (U8U8). `--allow-int8-saturation` lets such a model
   through; either way the check's figures go into meta.json's `integer_kernels`.
3. `load`: the graph's inputs and outputs against the model's config, by loading the version exactly as a
   server loads it (Servable.load with the ONNX Runtime backend, on the caller's core thread pool) and warming
   it up.
4. `golden_inputs` + `check_golden`: golden inputs (the config's `sample` file, else the current version's
   meta.json) run through the core as requests are served; every score must be finite and within the score
   output's declared `range`. The scores come back to become the new version's golden outputs.
5. `compare_latency` + `gate`: at each batch size a batch can close at, synthetic batches go to both versions
   interleaved, so the other load on the machine hits both alike; each version's median compute time (the
   median ignores the odd preempted run) gives a ratio per size, and the gated figure is their geometric mean
   (every size counts alike, whatever its absolute time): refused above `max_slowdown`.
The gates read and load; they write nothing to the repository.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adrank.repository.publish_error import PublishError

# The heavy modules (onnx, ONNX Runtime, the core, numpy, pydantic schemas) are imported by the functions that
# use them: the CLI imports the publish modules to register the command, and `adrank --help` should not pay.
if TYPE_CHECKING:
    import adrank._core as core
    from adrank.publish.steps import PublishSteps
    from adrank.repository.config import ModelConfig
    from adrank.repository.integer_kernels import IntegerNode
    from adrank.repository.layout import ModelEntry
    from adrank.repository.meta import VersionMeta
    from adrank.servable import Servable


# The flag that publishes a model whose integer nodes can saturate, as the refusal names it.
ALLOW_SATURATION_FLAG = "--allow-int8-saturation"
# Nodes named in a refusal (the first one in full) and kept in meta.json: enough to find the pattern, short
# enough for one line.
NAMED_NODES = 3
RECORDED_NODES = 5


@dataclass(frozen=True)
class IntegerKernelCheck:
    integer_nodes: int  # integer MatMul/Conv nodes (one per weight), subgraphs included
    saturation_risk: int  # of them, those that can saturate on CPUs without VNNI
    allowed: bool  # some can, and ALLOW_SATURATION_FLAG let them through
    nodes: list[str]  # the first RECORDED_NODES that can, described

    def describe(self) -> str:
        if not self.integer_nodes:
            return "no integer MatMul/Conv nodes"
        nodes = f"{self.integer_nodes} integer MatMul/Conv node{'s' if self.integer_nodes > 1 else ''}"
        if not self.saturation_risk:
            return f"{nodes}, none can saturate without VNNI"
        return f"{self.saturation_risk} of {nodes} can saturate without VNNI: published with {ALLOW_SATURATION_FLAG}"

    def record(self) -> dict[str, Any]:
        """meta.json's `integer_kernels` (repository/meta.py: IntegerKernels)."""
        record: dict[str, Any] = {"integer_nodes": self.integer_nodes, "saturation_risk": self.saturation_risk}
        if self.saturation_risk:
            record.update(allowed=self.allowed, by=f"adrank publish {ALLOW_SATURATION_FLAG}", nodes=self.nodes)
        return record


@dataclass(frozen=True)
class GoldenCheck:
    origin: str  # where the golden inputs came from
    requests: int
    rows: int
    min: float
    max: float
    range: tuple[float, float] | None  # the score output's declared range, if any


@dataclass(frozen=True)
class SizeLatency:
    rows: int
    current_us: float  # median compute time of the current version
    new_us: float
    ratio: float  # new / current


@dataclass(frozen=True)
class LatencyComparison:
    current_version: int
    reps: int
    max_slowdown: float
    sizes: list[SizeLatency]
    ratio: float  # geometric mean of the per-size ratios: the gated figure

    def describe(self) -> str:
        per_size = ", ".join(f"{s.rows} rows {s.ratio:.2f}x" for s in self.sizes)
        return (
            f"{self.ratio:.2f}x the compute time of version {self.current_version} "
            f"(geometric mean of {per_size}; {self.reps} runs each)"
        )


def check_onnx(path: Path) -> str:
    """The ONNX checker's full check; returns the file's sha256, taken before the check."""
    import onnx

    from adrank.repository.meta import sha256_file

    if not path.is_file():
        raise PublishError(f"{path}: no such file")
    digest = sha256_file(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # the checker raises ValidationError, InferenceError, or protobuf's DecodeError
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PublishError(f"{path}: the ONNX checker refuses it: {first_line}") from error
    return digest


def check_integer_kernels(path: Path, allow_saturation: bool) -> IntegerKernelCheck:
    """Refuses integer nodes that can saturate on CPUs without VNNI, unless `allow_saturation`."""
    import onnx

    from adrank.repository.integer_kernels import integer_nodes

    nodes = integer_nodes(onnx.load(str(path)))  # the checker passed: it parses
    risks = [node for node in nodes if node.can_saturate]
    if risks and not allow_saturation:
        raise PublishError(_saturation_refusal(risks))
    return IntegerKernelCheck(len(nodes), len(risks), bool(risks), [r.describe() for r in risks[:RECORDED_NODES]])


def load(pool: core.ThreadPool, config: ModelConfig, version_dir: Path, version: int) -> Servable:
    """The version loaded as a server loads it, and warmed up; the caller unloads it."""
    from adrank.backends.base import BackendError
    from adrank.servable import Servable

    try:
        servable = Servable.load(pool, config, version_dir, version)
    except BackendError as error:
        raise PublishError(f"the model does not match its config: {error}") from error
    servable.warm_up()
    return servable


def golden_inputs(entry: ModelEntry, current: int | None, meta: VersionMeta | None) -> tuple[dict[str, Any], str]:
    """The golden inputs and where they come from: the config's sample, else the current version's meta."""
    if entry.config.sample is not None:
        sample = entry.path / entry.config.sample
        try:
            inputs = json.loads(sample.read_text())
        except (OSError, ValueError) as error:
            raise PublishError(f"{sample} (config sample): cannot read: {error}") from error
        if not isinstance(inputs, dict):
            raise PublishError(f"{sample} (config sample): expected a JSON object of inputs, like meta.json's golden")
        return inputs, str(sample)
    if meta is not None:
        return meta.golden.inputs, f"version {current}'s meta.json"
    reason = "it has no version yet" if current is None else f"version {current} has no meta.json"
    raise PublishError(
        f"model '{entry.name}': no golden inputs to validate with: {reason} and its config.yaml names no `sample` "
        "(a JSON file beside it in meta.json's golden.inputs format)"
    )


def check_golden(
    servable: Servable, inputs: dict[str, Any], origin: str, progress: PublishSteps
) -> tuple[GoldenCheck, list[float]]:
    """Runs the golden requests as served; every score finite and in range. Returns the check and the scores."""
    import numpy as np

    from adrank.repository.meta import MetaError, golden_requests
    from adrank.status import RequestError

    config = servable.config
    try:
        requests = golden_requests(config, inputs)
    except MetaError as error:
        raise PublishError(f"{origin}: {error}") from error
    scores: list[np.ndarray] = []
    with progress.bar("golden requests", len(requests)) as advance:
        for request in requests:
            try:
                scores.extend(servable.score([request]))
            except RequestError as error:
                raise PublishError(f"golden inputs from {origin}: the model cannot run them: {error}") from error
            advance()
    values = np.concatenate(scores)
    output = config.outputs[0]
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        raise PublishError(
            f"golden: output '{output.name}' row {row} is {values[row]} (not finite; {bad.size} of {values.size} rows)"
        )
    if output.range is not None:
        lo, hi = output.range
        outside = np.flatnonzero((values < lo) | (values > hi))
        if outside.size:
            row = int(outside[0])
            raise PublishError(
                f"golden: output '{output.name}' row {row} is {values[row]:.6g}, outside its declared range "
                f"[{lo}, {hi}] ({outside.size} of {values.size} rows)"
            )
    check = GoldenCheck(
        origin=origin,
        requests=len(requests),
        rows=int(values.size),
        min=float(values.min()),
        max=float(values.max()),
        range=output.range,
    )
    return check, [float(v) for v in values]


def compare_latency(
    new: Servable, current: Servable, reps: int, max_slowdown: float, progress: PublishSteps
) -> LatencyComparison:
    """Median compute time of each version at each batch size, the two interleaved run by run."""
    from adrank.servable import INTERNAL_TIMEOUT_S

    config = new.config
    # A request holds at most max_candidates rows; one request per batch is what makes compute_us the batch's.
    sizes = sorted({min(rows, config.max_candidates) for rows in config.batching.warmup_sizes()})
    measured: list[SizeLatency] = []
    with progress.bar(f"latency vs version {current.version}", len(sizes) * reps) as advance:
        for rows in sizes:
            request = new.synthetic_request(rows)  # the same inputs for both: the config is shared
            times: dict[int, list[int]] = {new.version: [], current.version: []}
            for rep in range(reps):
                # Alternate which goes first, so that neither always runs on caches the other warmed.
                order = (new, current) if rep % 2 == 0 else (current, new)
                for servable in order:
                    times[servable.version].append(
                        servable.model.submit(*request, timeout_s=INTERNAL_TIMEOUT_S).wait().compute_us
                    )
                advance()
            new_us = float(statistics.median(times[new.version]))
            current_us = float(statistics.median(times[current.version]))
            measured.append(SizeLatency(rows, current_us, new_us, new_us / max(current_us, 1.0)))
    ratio = math.exp(statistics.fmean(math.log(max(s.ratio, 1e-9)) for s in measured))
    return LatencyComparison(current.version, reps, max_slowdown, measured, ratio)


def gate(latency: LatencyComparison) -> None:
    """Refuses a new version slower than `max_slowdown` times the current one."""
    if latency.ratio > latency.max_slowdown:
        raise PublishError(
            f"latency: the new version takes {latency.describe()}, above --max-slowdown {latency.max_slowdown:.2f}"
        )


# Implementation details follow. API users need not read.


def _saturation_refusal(risks: list[IntegerNode]) -> str:
    count = f"{len(risks)} integer nodes can" if len(risks) > 1 else "an integer node can"
    others = [f"'{r.node}'" for r in risks[1:NAMED_NODES]]
    more = len(risks) - 1 - len(others)
    also = f"; also {', '.join(others)}{f' and {more} more' if more else ''}" if others else ""
    return (
        f"integer kernels: {count} saturate on CPUs without VNNI: {risks[0].describe()}{also}. "
        "Without VNNI (AVX2 only) ONNX Runtime adds pairs of 8-bit activation x int8 weight products in 16 bits "
        "with saturation, so this model would score differently on those CPUs. Re-quantize with "
        "quantize_dynamic(..., reduce_range=True) for 7-bit weights (every |w| <= 64) or with "
        f"weight_type=QuantType.QUInt8 (U8U8), or pass {ALLOW_SATURATION_FLAG} to publish it anyway"
    )
