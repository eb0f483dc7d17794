"""`adrank publish MODEL.onnx --model NAME`: validate a new model version, then make it visible atomically.

Contract:
- Nothing is visible until the last step. The version is assembled in `<repo>/<model>/.publish-<version>-<pid>`,
  a folder the server ignores (layout.py), and becomes `<repo>/<model>/<version>` by one rename(2) of a
  folder whose files are all written and fsynced. A server scanning the repository sees either no such
  version or the complete one: model.onnx and a meta.json whose sha256 is that file's.
- A refused publish leaves the repository as it found it: the temporary folder is removed on every failure.
- A killed publish (SIGKILL, power loss) leaves at most its temporary folder, invisible to servers; the next
  publish into the same model removes it (its pid is no longer alive). A kill after the rename leaves the
  complete version. `ADRANK_PUBLISH_KILL_AT=<step>` kills this process right after a step of `STEPS`, so the
  tests can kill it at every point between them.
- Versions are immutable: an existing version number is refused, and so is a rename onto a version that
  another publish created meanwhile (rename(2) fails onto a non-empty folder).

What is checked, in order (each refusal is a PublishError naming the file, the tensor or the figure):
1. the ONNX checker, full check (types and shapes inferred through the graph): a corrupt file stops here;
2. the graph's inputs and outputs against the model's config: the version is loaded exactly as a server loads
   it (Servable.load with the ONNX Runtime backend, on a private core thread pool) and warmed up;
3. golden inputs (the config's `sample` file, else the current version's meta.json) run through the core as
   requests are served: every score must be finite and within the score output's declared `range`. The new
   scores become the version's golden outputs, which a server replays before serving it (the parity check);
4. latency against the current version (the rollout's stable one where `rollout.yaml` names it, else the
   latest) on this machine: at each batch size a batch can close at, synthetic batches go to both versions
   interleaved, so the other load on the machine hits both alike; each version's median compute time (the
   median ignores the odd preempted run) gives a ratio per size, and the gate is their geometric mean (every
   size counts alike, whatever its absolute time): refused above `max_slowdown`. A model's first version has
   nothing to compare with: the comparison is skipped and the report says so.
The new version's meta.json records the figures (sha256, source, validation).

Scope: the model must be one self-contained model.onnx (no external data files); files the config names
beside it (a text input's tokenizer.json) are taken from the current version, or from beside MODEL.onnx.
The temporary folder's pid tells whether its publish is alive on this machine only: publish into a
repository shared between machines from one machine at a time.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# The heavy modules (onnx, ONNX Runtime, the core, pydantic schemas: ~2 s on a busy 2-core machine) are
# imported by the functions that use them: the CLI imports this module to register the command, and
# `adrank --help` or `adrank serve` should not pay for them.
if TYPE_CHECKING:
    from rich.console import Console

    import adrank._core as core
    from adrank.repository.config import ModelConfig
    from adrank.repository.layout import ModelEntry
    from adrank.repository.meta import VersionMeta
    from adrank.servable import Servable

# The steps, in order; ADRANK_PUBLISH_KILL_AT=<step> SIGKILLs the process right after one (tests only).
STEPS = ("checked", "copied", "loaded", "golden", "benchmarked", "meta_written", "renamed")
KILL_ENV = "ADRANK_PUBLISH_KILL_AT"
STAGING_PREFIX = ".publish-"
_STAGING_NAME = re.compile(r"^\.publish-(\d+)-(\d+)$")
MODEL_FILE = "model.onnx"
# 10 % slower is within what a retrained model of the same architecture may cost; beyond it a person decides.
DEFAULT_MAX_SLOWDOWN = 1.10
# Per batch size and version. With the two versions interleaved, medians of 50 runs put the bundled ctr model
# against itself at 0.99-1.04 (18 publishes on a shared 2-core machine), well inside the default gate; the
# whole comparison takes ~0.2 s for ctr.
DEFAULT_BENCH_REPS = 50
# The golden tolerance when the current version has none to reuse (meta.py states why 1e-5).
DEFAULT_ATOL = 1e-5


class PublishError(Exception):
    """A publish refused; the message names what failed. The repository is unchanged."""


@dataclass(frozen=True)
class PublishOptions:
    model: str
    onnx: Path  # the MODEL.onnx to publish
    repository: Path = Path("models")
    version: int | None = None  # None: one more than the highest existing version
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    bench_reps: int = DEFAULT_BENCH_REPS
    source: str | None = None  # where the model comes from (a training run, a commit), kept in meta.json


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


@dataclass(frozen=True)
class PublishReport:
    model: str
    version: int
    path: Path
    sha256: str
    source: str  # the published file, as given
    source_sha256: str  # equal to sha256: the bytes checked are the bytes published
    golden: GoldenCheck
    latency: LatencyComparison | None  # None: nothing to compare with (see latency_note)
    latency_note: str
    # False when the config's version_policy leaves this version out: servers load it only once a rollout
    # or the policy names it.
    loaded_by_policy: bool
    seconds: float
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["path"] = str(self.path)
        return report


class PublishProgress:
    """Step lines and, on a terminal, progress bars for the slow steps; all on `console` (stderr).

    No console: silent (library use). Bars only when the console is a terminal, so logs and CI output get
    the step lines alone.
    """

    def __init__(self, console: Console | None = None, bars: bool = True) -> None:
        self.console = console
        self.bars = bars and console is not None and console.is_terminal

    def step(self, message: str) -> None:
        if self.console is not None:
            # markup off: messages hold brackets ("range [0.0, 1.0]") that are not rich markup.
            self.console.print(f"adrank publish: {message}", markup=False, highlight=False, soft_wrap=True)

    @contextmanager
    def bar(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        """Yields `advance()`; total None is a spinner (a step with no count)."""
        if not self.bars:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda: progress.advance(task)


def publish(options: PublishOptions, progress: PublishProgress | None = None) -> PublishReport:
    """Validates `options.onnx` as a new version of `options.model` and renames it into place."""
    import adrank._core as core

    progress = progress or PublishProgress()
    kill_at = _kill_step()
    if options.max_slowdown <= 0 or options.bench_reps < 1:
        raise PublishError(f"max_slowdown {options.max_slowdown} must be > 0 and bench_reps {options.bench_reps} >= 1")
    started = time.monotonic()
    steps: list[str] = []

    def done(step: str, message: str) -> None:
        steps.append(f"{step}: {message}")
        progress.step(message)
        if kill_at == step:
            os.kill(os.getpid(), signal.SIGKILL)

    entry = _model_entry(options.repository, options.model)
    version = _new_version(entry, options.version)
    _remove_stale_staging(entry.path)
    current = _current_version(entry)
    source_sha256 = _check_onnx(options.onnx)
    done("checked", f"{options.onnx}: the ONNX checker passes (full check)")

    staging = entry.path / f"{STAGING_PREFIX}{version}-{os.getpid()}"
    final = entry.version_dir(version)
    pool = core.ThreadPool(num_workers=1)  # one worker: the two versions never run at once while measured
    servables: list[Servable] = []
    renamed = False
    try:
        staging.mkdir()
        sha256 = _stage_files(options.onnx, source_sha256, entry, current, staging)
        done("copied", f"staged in {staging} (sha256 {sha256[:12]}...)")

        with progress.bar("loading and warming up", None):
            new = _load(pool, entry.config, staging, version)
            servables.append(new)
        done("loaded", f"the graph's inputs and outputs match {entry.path / 'config.yaml'}; warmed up")

        current_meta = _current_meta(entry, current)
        inputs, origin = _golden_inputs(entry, current, current_meta)
        golden, scores = _check_golden(new, inputs, origin, progress)
        done("golden", f"golden: {golden.rows} rows from {origin}: scores in [{golden.min:.6g}, {golden.max:.6g}]")

        latency = None
        if current is None:
            note = f"no current version of '{entry.name}' to compare with: latency comparison skipped"
        else:
            with progress.bar(f"loading version {current}", None):
                servables.append(_load(pool, entry.config, entry.version_dir(current), current))
            latency = _compare_latency(new, servables[-1], options, progress)
            note = latency.describe()
            _gate(latency)
        done("benchmarked", f"latency: {note}")

        report = PublishReport(
            model=entry.name,
            version=version,
            path=final,
            sha256=sha256,
            source=str(options.onnx),
            source_sha256=source_sha256,
            golden=golden,
            latency=latency,
            latency_note=note,
            loaded_by_policy=version in entry.config.version_policy.select((*entry.versions, version)),
            seconds=0.0,
            steps=steps,
        )
        atol = current_meta.golden.atol if current_meta is not None else DEFAULT_ATOL
        golden_record = {"inputs": inputs, "outputs": {entry.config.score_output: scores}, "atol": atol}
        _write_json(staging / "meta.json", _meta(report, options, golden_record))
        _fsync_dir(staging)
        done("meta_written", f"wrote {staging / 'meta.json'}")

        _rename_into_place(staging, final)
        renamed = True
        done("renamed", f"{entry.name} version {version} published at {final}")
    finally:
        try:
            for servable in servables:
                servable.unload(pool)
            pool.shutdown()
        finally:
            if not renamed:
                shutil.rmtree(staging, ignore_errors=True)

    return replace(report, seconds=round(time.monotonic() - started, 3))


# Implementation details follow. API users need not read.


def _kill_step() -> str | None:
    step = os.environ.get(KILL_ENV) or None
    if step is not None and step not in STEPS:
        raise PublishError(f"{KILL_ENV}={step!r}: not a step; the steps are {', '.join(STEPS)}")
    return step


def _model_entry(repository: Path, model: str) -> ModelEntry:
    from adrank.repository.config import ConfigError, ModelNameError, check_model_name
    from adrank.repository.layout import CONFIG_FILE, ModelRepository

    try:
        check_model_name(model)  # before any path is made of it: "../x" would write outside the repository
    except ModelNameError as error:
        raise PublishError(f"--model: {error}") from error
    if not repository.is_dir():
        raise PublishError(f"repository {repository}: no such folder")
    config = repository / model / CONFIG_FILE
    if not config.is_file():
        raise PublishError(f"model '{model}': no {config} (a model is a folder of the repository with a config.yaml)")
    try:
        return ModelRepository(repository).entry(model)
    except ConfigError as error:
        raise PublishError(str(error)) from error


def _new_version(entry: ModelEntry, requested: int | None) -> int:
    if requested is None:
        return (entry.versions[-1] if entry.versions else 0) + 1
    if requested < 1:
        raise PublishError(f"--version {requested}: versions are positive integers")
    if requested in entry.versions:
        raise PublishError(
            f"model '{entry.name}' version {requested} already exists ({entry.version_dir(requested)}); versions "
            f"are immutable: publish as a new version (omit --version for {entry.versions[-1] + 1})"
        )
    return requested


def _remove_stale_staging(model_dir: Path) -> None:
    """Removes the temporary folders of publishes that died (a kill leaves its folder behind)."""
    for path in model_dir.iterdir():
        match = _STAGING_NAME.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder named for this pid is an earlier process's: this one has made none yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _current_version(entry: ModelEntry) -> int | None:
    """The rollout's stable version if rollout.yaml names an existing one, else the latest; None if none."""
    from adrank.rollout.policy import PolicyError, load_policy

    try:
        stable = load_policy(entry.path).stable
    except PolicyError as error:
        raise PublishError(str(error)) from error
    if stable in entry.versions:
        return stable
    return entry.versions[-1] if entry.versions else None


def _check_onnx(path: Path) -> str:
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


def _stage_files(source: Path, source_sha256: str, entry: ModelEntry, current: int | None, staging: Path) -> str:
    """Copies the model and the files its config names into the staging folder; returns the copy's sha256."""
    from adrank.repository.meta import sha256_file

    target = staging / MODEL_FILE
    shutil.copyfile(source, target)
    _fsync_file(target)
    sha256 = sha256_file(target)
    if sha256 != source_sha256:  # the checked bytes must be the published bytes
        raise PublishError(f"{source}: the file changed while it was being published (sha256 {sha256} != checked)")
    for spec in entry.config.inputs:
        if spec.tokenizer is None:
            continue
        places = ([entry.version_dir(current)] if current is not None else []) + [source.parent]
        found = next((p / spec.tokenizer.file for p in places if (p / spec.tokenizer.file).is_file()), None)
        if found is None:
            where = " nor ".join(str(p) for p in places)
            raise PublishError(f"input '{spec.name}': its tokenizer file '{spec.tokenizer.file}' is not in {where}")
        shutil.copyfile(found, staging / spec.tokenizer.file)
        _fsync_file(staging / spec.tokenizer.file)
    return sha256


def _load(pool: core.ThreadPool, config: ModelConfig, version_dir: Path, version: int) -> Servable:
    from adrank.backends.base import BackendError
    from adrank.servable import Servable

    try:
        servable = Servable.load(pool, config, version_dir, version)
    except BackendError as error:
        raise PublishError(f"the model does not match its config: {error}") from error
    servable.warm_up()
    return servable


def _current_meta(entry: ModelEntry, current: int | None) -> VersionMeta | None:
    from adrank.repository.meta import META_FILE, MetaError, load_meta

    if current is None or not (entry.version_dir(current) / META_FILE).is_file():
        return None
    try:
        return load_meta(entry.version_dir(current) / META_FILE)
    except MetaError as error:
        raise PublishError(f"current version {current}: {error}") from error


def _golden_inputs(entry: ModelEntry, current: int | None, meta: VersionMeta | None) -> tuple[dict[str, Any], str]:
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


def _check_golden(
    servable: Servable, inputs: dict[str, Any], origin: str, progress: PublishProgress
) -> tuple[GoldenCheck, list[float]]:
    """Runs the golden requests as served; every score finite and in range. Returns the check and the scores."""
    import numpy as np

    import adrank._core as core
    from adrank.repository.meta import MetaError, golden_requests
    from adrank.servable import INTERNAL_TIMEOUT_S, RequestError

    config = servable.config
    try:
        requests = golden_requests(config, inputs)
    except MetaError as error:
        raise PublishError(f"{origin}: {error}") from error
    scores: list[np.ndarray] = []
    with progress.bar("golden requests", len(requests)) as advance:
        for candidates, context in requests:
            rows = len(next(iter(candidates.values())))
            try:
                prepared = servable.prepare(candidates, context, rows)
                result = servable.model.submit(*prepared, timeout_s=INTERNAL_TIMEOUT_S).wait()
            except (RequestError, core.CoreError) as error:
                raise PublishError(f"golden inputs from {origin}: the model cannot run them: {error}") from error
            scores.append(np.array(result.outputs[config.score_output], dtype=np.float32).reshape(-1))
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


def _compare_latency(
    new: Servable, current: Servable, options: PublishOptions, progress: PublishProgress
) -> LatencyComparison:
    """Median compute time of each version at each batch size, the two interleaved run by run."""
    from adrank.servable import INTERNAL_TIMEOUT_S

    config = new.config
    # A request holds at most max_candidates rows; one request per batch is what makes compute_us the batch's.
    sizes = sorted({min(rows, config.max_candidates) for rows in config.batching.warmup_sizes()})
    measured: list[SizeLatency] = []
    with progress.bar(f"latency vs version {current.version}", len(sizes) * options.bench_reps) as advance:
        for rows in sizes:
            request = new.synthetic_request(rows)  # the same inputs for both: the config is shared
            times: dict[int, list[int]] = {new.version: [], current.version: []}
            for rep in range(options.bench_reps):
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
    return LatencyComparison(current.version, options.bench_reps, options.max_slowdown, measured, ratio)


def _gate(latency: LatencyComparison) -> None:
    if latency.ratio > latency.max_slowdown:
        raise PublishError(
            f"latency: the new version takes {latency.describe()}, above --max-slowdown {latency.max_slowdown:.2f}"
        )


def _meta(report: PublishReport, options: PublishOptions, golden: dict[str, Any]) -> dict[str, Any]:
    """meta.json: what a server checks (sha256, golden) and the publish's provenance and figures."""
    import onnx
    import onnxruntime

    from adrank.repository.meta import VersionMeta

    source: dict[str, Any] = {"file": str(options.onnx.resolve()), "sha256": report.source_sha256}
    if options.source:
        source["description"] = options.source
    latency: dict[str, Any] = {"skipped": report.latency_note}
    if report.latency is not None:
        latency = {**asdict(report.latency), "statistic": "median compute_us per size; ratio: geometric mean"}
    config = options.repository / report.model / "config.yaml"
    meta = {
        "model": report.model,
        "version": report.version,
        "sha256": report.sha256,
        "created_by": "adrank publish",
        "source": source,
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "golden": golden,
        "validation": {
            "checker": {"onnx": onnx.__version__, "full_check": True, "passed": True},
            "signature": {"backend": f"onnxruntime {onnxruntime.__version__}", "config": str(config), "matches": True},
            "golden": asdict(report.golden),
            "latency": latency,
        },
    }
    VersionMeta.model_validate(meta)  # what a server will read must parse: refuse here, not at load
    return meta


def _write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # A folder's entries (the names of the files in it, a rename) are durable once the folder is fsynced.
    _fsync_file(path)


def _rename_into_place(staging: Path, final: Path) -> None:
    # rename(2) replaces an empty folder but fails onto a non-empty one: a version that appeared meanwhile
    # (another publish) is never overwritten. An empty one would have been refused as existing at the start.
    try:
        os.rename(staging, final)
    except OSError as error:
        raise PublishError(
            f"{final}: cannot rename the staged version into place ({error.strerror}); another publish may have "
            "created this version meanwhile"
        ) from error
    _fsync_dir(final.parent)


def _echo_report(report: PublishReport) -> None:
    click.echo(f"adrank publish: {report.model} version {report.version} published at {report.path}")
    click.echo(f"  sha256   {report.sha256}  (from {report.source})")
    g = report.golden
    declared = f" within [{g.range[0]}, {g.range[1]}]" if g.range else ""
    click.echo(f"  golden   {g.rows} rows from {g.origin}: scores in [{g.min:.6g}, {g.max:.6g}]{declared}")
    if report.latency is None:
        click.echo(f"  latency  {report.latency_note}")
    else:
        lat = report.latency
        click.echo(f"  latency  ratio {lat.ratio:.3f} vs version {lat.current_version} (limit {lat.max_slowdown:.2f})")
        click.echo(f"  {'rows':>8} {'current us':>11} {'new us':>9} {'ratio':>7}")
        for s in lat.sizes:
            click.echo(f"  {s.rows:>8} {s.current_us:>11.0f} {s.new_us:>9.0f} {s.ratio:>7.3f}")
    if not report.loaded_by_policy:
        click.echo(
            f"  note     the config's version_policy leaves version {report.version} out: servers load it once "
            "the policy or the model's rollout names it"
        )


@click.command("publish")
@click.argument("onnx_file", metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="The model (a folder of the repository with a config.yaml).")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Version number [default: latest + 1].")
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Model repository: <name>/config.yaml and <name>/<version>/model.onnx.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_SLOWDOWN,
    show_default=True,
    help="Refuse if the new version's compute time is above this ratio of the current version's.",
)
@click.option(
    "--bench-reps",
    type=click.IntRange(min=1),
    default=DEFAULT_BENCH_REPS,
    show_default=True,
    help="Runs per batch size and version in the latency comparison.",
)
@click.option("--source", default=None, help="Where the model comes from (training run, commit), kept in meta.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def publish_command(
    onnx_file: Path,
    model: str,
    version: int | None,
    repository: Path,
    max_slowdown: float,
    bench_reps: int,
    source: str | None,
    as_json: bool,
) -> None:
    """Validate MODEL.onnx as a new version of a model and publish it atomically.

    Checks, in order: the ONNX checker; the graph against the model's config; golden inputs give finite scores
    in the declared range; latency against the current version (refused above --max-slowdown). Nothing is
    visible in the repository until all pass; a refused or killed publish leaves no version behind.
    """
    from rich.console import Console

    options = PublishOptions(model, onnx_file, repository, version, max_slowdown, bench_reps, source)
    progress = PublishProgress(Console(stderr=True), bars=not as_json)
    try:
        report = publish(options, progress)
    except PublishError as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _echo_report(report)
