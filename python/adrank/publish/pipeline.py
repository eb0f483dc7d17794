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
2. integer kernels: no integer MatMul/Conv node (subgraphs included) may multiply 8-bit activations by int8
   weights that use more than 7 bits, which saturate on CPUs without VNNI and would make the model score
   differently there (gates.py says why and what the refusal names); `allow_int8_saturation`
   (`--allow-int8-saturation`) publishes such a model anyway, and meta.json's `integer_kernels` records it;
3. the graph's inputs and outputs against the model's config: the version is loaded exactly as a server loads
   it (Servable.load with the ONNX Runtime backend, on a private core thread pool) and warmed up;
4. golden inputs (the config's `sample` file, else the current version's meta.json) run through the core as
   requests are served: every score must be finite and within the score output's declared `range`. The new
   scores become the version's golden outputs, which a server replays before serving it (the parity check);
5. latency against the current version (the rollout's stable one where `rollout.yaml` names it, else the
   latest) on this machine: at each batch size a batch can close at, synthetic batches go to both versions
   interleaved, so the other load on the machine hits both alike; each version's median compute time (the
   median ignores the odd preempted run) gives a ratio per size, and the gate is their geometric mean (every
   size counts alike, whatever its absolute time): refused above `max_slowdown`. A model's first version has
   nothing to compare with: the comparison is skipped and the report says so.
Then what serves: a model that holds new versions back (the default; config.yaml `latest_serves: true` opts
out) has rollout.yaml's stable pinned to the current version right before the rename, so servers load and warm
the new version but route nothing to it until it is promoted; the report's `routing` line says what servers
will route (routing.py).

The new version's meta.json records the figures (sha256, source, validation, integer_kernels: how many
integer nodes can saturate without VNNI, 0 for a model that passed, and who allowed them otherwise).

Scope: the model must be one self-contained model.onnx (no external data files); files the config names
beside it (a text input's tokenizer.json) are taken from the current version, or from beside MODEL.onnx.
The temporary folder's pid tells whether its publish is alive on this machine only: publish into a
repository shared between machines from one machine at a time.

Where the parts live: staging.py stages the files and renames them into place (and holds the kill hook),
gates.py runs checks 1-5, steps.py is how progress is reported (the CLI shows it: cli_publish.py).
This module runs them in order and writes meta.json; PublishError, PublishOptions and PublishReport are
imported from here.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adrank.publish import gates
from adrank.publish.gates import GoldenCheck, IntegerKernelCheck, LatencyComparison, SizeLatency
from adrank.publish.steps import PublishSteps, QuietSteps
from adrank.repository import staging
from adrank.repository.publish_error import PublishError
from adrank.repository.staging import KILL_ENV, STEPS

# The heavy modules (onnx, ONNX Runtime, the core, pydantic schemas: ~2 s on a busy 2-core machine) are
# imported by the functions that use them: the CLI imports this module for the command's defaults, and
# `adrank --help` or `adrank serve` should not pay for them.
if TYPE_CHECKING:
    from adrank.repository.layout import ModelEntry
    from adrank.repository.meta import VersionMeta
    from adrank.servable import Servable

__all__ = [
    "DEFAULT_BENCH_REPS",
    "DEFAULT_MAX_SLOWDOWN",
    "KILL_ENV",
    "STEPS",
    "GoldenCheck",
    "IntegerKernelCheck",
    "LatencyComparison",
    "PublishError",
    "PublishOptions",
    "PublishReport",
    "PublishSteps",
    "SizeLatency",
    "publish",
]

# 10 % slower is within what a retrained model of the same architecture may cost; beyond it a person decides.
DEFAULT_MAX_SLOWDOWN = 1.10
# Per batch size and version. With the two versions interleaved, medians of 50 runs put the bundled ctr model
# against itself at 0.99-1.04 (18 publishes on a shared 2-core machine), well inside the default gate; the
# whole comparison takes ~0.2 s for ctr.
DEFAULT_BENCH_REPS = 50
# The golden tolerance when the current version has none to reuse (meta.py states why 1e-5).
DEFAULT_ATOL = 1e-5
DEFAULT_ATOL_REASON = (
    "adrank publish's default: fp32 kernels differ by a few ulps between CPU kinds (about 1e-7 on a score), and "
    "1e-5 absorbs that without letting a different model through"
)


@dataclass(frozen=True)
class PublishOptions:
    model: str
    onnx: Path  # the MODEL.onnx to publish
    repository: Path = Path("models")
    version: int | None = None  # None: one more than the highest existing version
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    bench_reps: int = DEFAULT_BENCH_REPS
    source: str | None = None  # where the model comes from (a training run, a commit), kept in meta.json
    # Publish even if integer nodes can saturate on CPUs without VNNI (scores would differ there): recorded.
    allow_int8_saturation: bool = False
    # Where a stable pin is audited (rollout/audit_location.py: a directory, "repository", None the default).
    audit_log: str | None = None
    actor: str | None = None  # who publishes, for the audit log (None: the user running it)


@dataclass(frozen=True)
class PublishReport:
    model: str
    version: int
    path: Path
    sha256: str
    source: str  # the published file, as given
    source_sha256: str  # equal to sha256: the bytes checked are the bytes published
    integer_kernels: IntegerKernelCheck
    golden: GoldenCheck
    latency: LatencyComparison | None  # None: nothing to compare with (see latency_note)
    latency_note: str
    # False when the config's version_policy leaves this version out: servers load it only once a rollout
    # or the policy names it.
    loaded_by_policy: bool
    seconds: float
    # What servers route once they have loaded the version (routing.py: expected_route), and whether this
    # publish pinned rollout.yaml's stable to keep the new version out of traffic.
    routing: str = ""
    pinned_stable: int | None = None
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["path"] = str(self.path)
        return report


def publish(options: PublishOptions, progress: PublishSteps | None = None) -> PublishReport:
    """Validates `options.onnx` as a new version of `options.model` and renames it into place."""
    import adrank._core as core
    from adrank.publish import routing
    from adrank.rollout.audit_location import AuditLocation

    progress = progress or QuietSteps()
    kill_at = staging.kill_step()
    if options.max_slowdown <= 0 or options.bench_reps < 1:
        raise PublishError(f"max_slowdown {options.max_slowdown} must be > 0 and bench_reps {options.bench_reps} >= 1")
    started = time.monotonic()
    steps: list[str] = []

    def done(step: str, message: str) -> None:
        steps.append(f"{step}: {message}")
        progress.step(message)
        staging.kill_if_asked(kill_at, step)

    entry = _model_entry(options.repository, options.model)
    version = staging.new_version(entry, options.version)
    staging.remove_stale_staging(entry.path)
    current = _current_version(entry)
    source_sha256 = gates.check_onnx(options.onnx)
    integer_kernels = gates.check_integer_kernels(options.onnx, options.allow_int8_saturation)
    done(
        "checked",
        f"{options.onnx}: the ONNX checker passes (full check); integer kernels: {integer_kernels.describe()}",
    )

    folder = staging.staging_dir(entry, version)
    final = entry.version_dir(version)
    pool = core.ThreadPool(num_workers=1)  # one worker: the two versions never run at once while measured
    servables: list[Servable] = []
    renamed = False
    try:
        folder.mkdir()
        sha256 = staging.stage_files(options.onnx, source_sha256, entry, current, folder)
        done("copied", f"staged in {folder} (sha256 {sha256[:12]}...)")

        with progress.bar("loading and warming up", None):
            new = gates.load(pool, entry.config, folder, version)
            servables.append(new)
        done("loaded", f"the graph's inputs and outputs match {entry.path / 'config.yaml'}; warmed up")

        current_meta = _current_meta(entry, current)
        inputs, origin = gates.golden_inputs(entry, current, current_meta)
        golden, scores = gates.check_golden(new, inputs, origin, progress)
        done("golden", f"golden: {golden.rows} rows from {origin}: scores in [{golden.min:.6g}, {golden.max:.6g}]")

        latency = None
        if current is None:
            note = f"no current version of '{entry.name}' to compare with: latency comparison skipped"
        else:
            with progress.bar(f"loading version {current}", None):
                servables.append(gates.load(pool, entry.config, entry.version_dir(current), current))
            latency = gates.compare_latency(new, servables[-1], options.bench_reps, options.max_slowdown, progress)
            note = latency.describe()
            gates.gate(latency)
        done("benchmarked", f"latency: {note}")

        report = PublishReport(
            model=entry.name,
            version=version,
            path=final,
            sha256=sha256,
            source=str(options.onnx),
            source_sha256=source_sha256,
            integer_kernels=integer_kernels,
            golden=golden,
            latency=latency,
            latency_note=note,
            loaded_by_policy=version in entry.config.version_policy.select((*entry.versions, version)),
            seconds=0.0,
            steps=steps,
        )
        golden_record = {"inputs": inputs, "outputs": {entry.config.score_output: scores}, **_tolerance(current_meta)}
        staging.write_json(folder / "meta.json", _meta(report, options, golden_record))
        staging.fsync_dir(folder)
        done("meta_written", f"wrote {folder / 'meta.json'}")

        pin = routing.pin_stable(entry, current)
        try:
            staging.rename_into_place(folder, final)
        except BaseException:
            if pin is not None:
                pin.undo()
            raise
        renamed = True
        if pin is not None:
            audit = AuditLocation.from_option(options.audit_log, options.repository)
            pin.audit(audit, entry.name, version, options.actor)
        route = routing.expected_route(entry, version, current, report.loaded_by_policy)
        report = replace(report, routing=route, pinned_stable=pin.after.stable if pin is not None else None)
        done("renamed", f"{entry.name} version {version} published at {final}")
    finally:
        try:
            for servable in servables:
                servable.unload(pool)
            pool.shutdown()
        finally:
            if not renamed:
                shutil.rmtree(folder, ignore_errors=True)

    return replace(report, seconds=round(time.monotonic() - started, 3))


# Implementation details follow. API users need not read.


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


def _current_meta(entry: ModelEntry, current: int | None) -> VersionMeta | None:
    from adrank.repository.meta import META_FILE, MetaError, load_meta

    if current is None or not (entry.version_dir(current) / META_FILE).is_file():
        return None
    try:
        return load_meta(entry.version_dir(current) / META_FILE)
    except MetaError as error:
        raise PublishError(f"current version {current}: {error}") from error


def _tolerance(current: VersionMeta | None) -> dict[str, Any]:
    """The new version's parity tolerance and its reason: the current version's, whose model it replaces (its
    arithmetic, and so what a correct CPU may differ by, is the model's), else the default."""
    if current is None:
        return {"atol": DEFAULT_ATOL, "atol_reason": DEFAULT_ATOL_REASON}
    reason = current.golden.atol_reason or f"kept from version {current.version}"
    return {"atol": current.golden.atol, "atol_reason": reason}


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
        "integer_kernels": report.integer_kernels.record(),
        "validation": {
            "checker": {"onnx": onnx.__version__, "full_check": True, "passed": True},
            "signature": {"backend": f"onnxruntime {onnxruntime.__version__}", "config": str(config), "matches": True},
            "golden": asdict(report.golden),
            "latency": latency,
        },
    }
    VersionMeta.model_validate(meta)  # what a server will read must parse: refuse here, not at load
    return meta
