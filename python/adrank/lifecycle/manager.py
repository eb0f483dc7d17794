"""ModelManager: the lifecycle of every model version this server loads, and the rollout that routes
requests among them.

What it keeps true (DESIGN.md, Model repository and Rollout):
- The versions loaded are, per model, those its `version_policy` selects from the repository (latest N,
  all, specific) plus those its rollout names (stable, canary, shadow).
- A version becomes routable only through: load in the background → warm up at every batch size a
  batch can close at → parity check (model.onnx hashes to meta.json's sha256, and the golden inputs,
  replayed through the core as requests are served, give the golden outputs within `atol`) → AVAILABLE.
  A version that fails any step is FAILED with the reason; nothing that is serving changes, and it is not
  retried until its files change or the admin API asks. A model left with no version that serves (at
  start-up, its newest version FAILED) falls back to its next newest version on disk that loads.
- Routing changes are atomic (one ModelRegistry.set_rollout): a request is routed to the old route or
  the new one, never to a half-made one. Stable is the policy's `stable`; without one, the version serving
  now (at start-up the newest AVAILABLE), so a new version loads and warms up but takes no traffic until a
  promote or a canary routes to it — unless config.yaml says `latest_serves: true`, where the newest
  AVAILABLE version serves (routes.py: route_for). Versions route only while on disk.
- Every route change is audited with its cause (rollout/route_change.py): explicit (the admin API, a
  guardrail, an unload or load on request) in the change's own entry, or implicit (rollout.yaml changed on
  disk, a load failure, a removed version or model, latest_serves) in a `route` entry.
- A version no longer wanted is removed from the registry first (no new request reaches it), then
  drained — every request that was routed to it finishes on it, however long it queued — then its core
  queue and sessions are released. No request is lost across a switch.
- Rollout changes are applied, written to the model's rollout.yaml (so a restart and the repository
  agree) and appended to its audit log; the guardrail monitor rolls a breaching candidate back the same
  way.
- Serving never writes into the repository: loading, failing, polling and reconciling only read it (the
  audit log is where `ManagerOptions.audit_log` says, by default outside it: rollout/audit_location.py),
  so a read-only or shared repository serves. Only a rollout change (admin API, guardrail) writes, its
  rollout.yaml. A version that fails is audited once per distinct failure (its reason and files), not at
  every poll that finds it still FAILED.
- Where rollout.yaml cannot be written (a read-only mount, as the Kubernetes manifests mount the repository),
  an admin change is refused (FAILED_PRECONDITION naming the file; nothing changes): applied on this server
  alone it would differ from the other replicas and be lost at a restart, and the repository is changed where
  it is written. A guardrail rollback is applied all the same — a breaching candidate must stop serving — and
  audited and logged as applied on this server only; it holds until rollout.yaml changes on disk (polls that
  read the same file do not undo it).

The watcher polls the repository every `poll_interval_s` (configs, version folders, rollout.yaml) and
reconciles. A config.yaml or rollout.yaml that does not validate is refused whole: the model keeps
serving what it served, and the error is reported (`describe()`, logs). A repository that cannot be read
at all (the folder vanished, a mount went away, permissions) changes nothing: every loaded version keeps
serving, the failed poll is logged and counted (`repository_errors`, adrank_repository_errors_total), and
the next poll tries again. Only a model folder gone from a repository that reads unloads that model.

Start-up (`load_all`) serves every model that has a version that loads and reports the others (FAILED
versions, config errors); it raises only when no model can serve, or the repository cannot be read.

Readiness: a model is ready when it has a routable (stable) version. `readiness()` maps every model of
the repository to that; `on_readiness` listeners hear each change of it (the front ends' per-model health
and the server's overall health and /readyz are made from it; this package knows nothing of gRPC health).

Thread-safety: one change at a time (reconcile, admin calls, guardrail rollbacks hold `_lock`; loading a
version runs under it, so changes queue behind a load — they are rare and a load takes seconds). `route`,
`servables` and `readiness` are lock-free reads of copy-on-write tables, called from the front ends per
request and from the HTTP threads per probe. Readiness listeners are called under `_lock`, on the thread
that made the change: they must only record or hand off (never block, never call back into the manager).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import adrank._core as core
from adrank.lifecycle.version_loader import file_signature, load_checked
from adrank.lifecycle.version_status import Route, VersionState, VersionStatus
from adrank.log_format import log_fields
from adrank.repository.config import ConfigError, ModelConfig
from adrank.repository.layout import ModelEntry, ModelRepository, RepositoryError
from adrank.repository.meta import integer_kernels_note
from adrank.rollout.audit import AuditEntry, AuditLog
from adrank.rollout.audit_location import AuditLocation
from adrank.rollout.guardrails import Comparison, GuardrailMonitor, Verdict
from adrank.rollout.policy import (
    GuardrailPolicy,
    PolicyError,
    RolloutPolicy,
    load_policy,
    policy_path,
    save_policy,
)
from adrank.rollout.route_change import EXPLICIT, MODEL_REMOVED, RouteChange, RouteContext, implicit_cause, route_record
from adrank.rollout.routes import describe_route, route_for, route_role, route_summary, same_route
from adrank.servable import Servable
from adrank.status import RequestError, StatusCode
from adrank.tenants import TenantsConfig
from adrank.ticker import Ticker

log = logging.getLogger("adrank.models")

__all__ = ["ManagerOptions", "ModelManager", "NothingToServe", "Readiness", "Route", "VersionState", "VersionStatus"]

# Every model of the repository -> whether it has a version that serves.
Readiness = Mapping[str, bool]


class NothingToServe(RuntimeError):
    """At start-up, no model of the repository has a version that serves; the message says why, per model."""


@dataclass(frozen=True)
class ManagerOptions:
    # The repository is polled, not watched with inotify: it may be a network or object-store mount.
    # 2 s: a publish goes live within seconds, and a poll (a few stat calls per model) costs nothing.
    poll_interval_s: float = 2.0
    # How long a removed version's requests may take to finish before its queue is closed anyway: above
    # any caller's deadline, so in practice every request finishes.
    drain_timeout_s: float = 30.0
    # Count every version's requests and latencies for the metrics (cpp/version_stats.h). False (a
    # server started with --no-metrics) counts only the versions a rollout compares: the guardrails
    # need them.
    metrics: bool = True
    # The callers' weights, limits and priority classes, taken by every version's batcher (tenants.py).
    tenants: TenantsConfig = field(default_factory=TenantsConfig)
    # Where the audit log goes: a directory (one <model>.jsonl each), "repository" (inside it, the old
    # layout), or None: the per-user default outside the repository (rollout/audit_location.py).
    audit_log: str | None = None


@dataclass
class _Model:
    name: str
    path: Path
    config: ModelConfig | None = None
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    error: str = ""  # why the config or rollout on disk is not applied
    # rollout.yaml's policy that `policy` overrides because the file could not be written (a guardrail rollback
    # on a read-only repository); None while `policy` is the file's.
    unwritten: RolloutPolicy | None = None


class ModelManager:
    def __init__(self, pool: core.ThreadPool, repository: ModelRepository, options: ManagerOptions | None = None):
        self.options = options or ManagerOptions()
        self.registry = core.ModelRegistry()
        self._tenants = self.options.tenants.to_core()
        self._pool = pool
        self._repository = repository
        self._lock = threading.RLock()
        self._models: dict[str, _Model] = {}
        # Models unloaded on request (unload_model): served again only once load_model asks.
        self._held: set[str] = set()
        self._versions: dict[tuple[str, int], VersionStatus] = {}
        # (name, version) -> Servable of every registered version: read per request without the lock.
        self._servables: Mapping[tuple[str, int], Servable] = MappingProxyType({})
        self._watcher: Ticker | None = None
        self.guardrails = GuardrailMonitor(self._comparisons, self._on_breach)
        self._readiness: Readiness = MappingProxyType({})
        self._readiness_listeners: list[Callable[[Readiness], None]] = []
        # Polls that could not read the repository (read by the metrics without the lock).
        self.repository_errors = 0
        self._repository_error = ""  # the current outage's error, logged once
        self.audit = AuditLocation.from_option(self.options.audit_log, repository.root)
        # (name, version) -> (reason, file signature) of the last failure audited: a version FAILED again
        # for the same reason on the same files (a retry, a fallback at each poll) adds no audit line.
        self._failures_audited: dict[tuple[str, int], tuple[str, tuple[float, ...]]] = {}

    # ---- start, watch, stop ------------------------------------------------------------------------

    def load_all(self) -> list[Servable]:
        """The first reconcile, at start-up: loads what every model serves and reports what cannot serve.

        RepositoryError if the repository cannot be read; NothingToServe if it holds models and none of
        them has a version that serves. A model with nothing to serve while others serve is logged (and
        the server is not ready until it has a version)."""
        with self._lock:
            self._reconcile(self._repository.model_names())
            unservable = {name: self._why_unservable(name) for name, ok in self._readiness.items() if not ok}
            for name, why in unservable.items():
                log.error(
                    "model %s has nothing to serve: %s (the server is not ready until it has)",
                    name,
                    why,
                    extra=log_fields(model=name),
                )
            if unservable and len(unservable) == len(self._models):
                raise NothingToServe(
                    "nothing to serve: " + "; ".join(f"model '{name}': {why}" for name, why in unservable.items())
                )
            return [s for s in self._servables.values()]

    def _why_unservable(self, name: str) -> str:
        model = self._models[name]
        if model.error:
            return model.error
        failed = [
            f"version {v} FAILED: {s.reason}"
            for (n, v), s in sorted(self._versions.items())
            if n == name and s.state == VersionState.FAILED
        ]
        return "; ".join(failed) or f"no version in {model.path}"

    def start_watching(self) -> None:
        self.guardrails.start()
        if self.options.poll_interval_s > 0:
            # A failed reconcile is logged; the next poll retries.
            self._watcher = Ticker("adrank-repository-watcher", self.options.poll_interval_s, self.reconcile, log)
            self._watcher.start()

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.guardrails.stop()

    def unload_all(self) -> None:
        with self._lock:
            for key in list(self._versions):
                self._unload(*key)
            self._update_readiness()

    # ---- lookups (the front ends route in the core, cpp/rank_call.h; this is the same routing for tools) --

    def route(self, name: str, version: int = 0, key: str = "") -> Route:
        """The version that answers (rollout, or pinned) and the shadow that mirrors; NOT_FOUND if none."""
        try:
            served, shadow = self.registry.route(name, version, key)
        except core.CoreError as error:
            raise RequestError(StatusCode.NOT_FOUND, str(error)) from error
        servable = self._servables[(name, served.version)]
        if shadow is None:
            return Route(servable, served)
        return Route(servable, served, self._servables.get((name, shadow.version)), shadow)

    def servables(self) -> list[Servable]:
        return list(self._servables.values())

    def version_states(self) -> list[tuple[str, int, VersionState]]:
        """Every known version's lifecycle state, without waiting for a load in progress (the metrics
        read it at each scrape): the copies are atomic under the GIL, and a state is one reference."""
        return [(s.model, s.version, s.state) for s in list(self._versions.values())]

    def model_names(self) -> list[str]:
        return list(self._models)

    def guardrail_policies(self) -> dict[str, GuardrailPolicy]:
        """Every model's guardrail limits, without waiting for a load in progress (the dashboard reads them at
        each sample): a model's policy is one reference, replaced whole under `_lock`."""
        return {name: model.policy.guardrails for name, model in list(self._models.items())}

    # ---- readiness (health) ------------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Every model of the repository -> whether it has a version that serves (lock-free)."""
        return self._readiness

    def ready(self) -> bool:
        """Every model of the repository has a version that serves."""
        return all(self._readiness.values())

    def on_readiness(self, listener: Callable[[Readiness], None]) -> None:
        """Calls `listener` with the new readiness at each change of it (see Thread-safety)."""
        with self._lock:
            self._readiness_listeners.append(listener)

    def _update_readiness(self) -> None:
        """Recomputes readiness after a change (under `_lock`) and tells the listeners if it moved."""
        readiness = {name: self.registry.rollout(name).stable != 0 for name in sorted(self._models)}
        if readiness == dict(self._readiness):
            return
        for name, ok in readiness.items():
            if self._readiness.get(name, True) != ok:
                log.info(
                    "model %s %s",
                    name,
                    "is ready" if ok else "has no version that serves: not ready",
                    extra=log_fields(model=name),
                )
        self._readiness = MappingProxyType(readiness)
        for listener in self._readiness_listeners:
            listener(self._readiness)

    # ---- reconcile: the repository's wish, applied -------------------------------------------------

    def reconcile(self) -> None:
        """Reads the repository and loads, routes and unloads to match it; a repository that cannot be
        read changes nothing (logged once per outage, counted per poll)."""
        with self._lock:
            try:
                names = self._repository.model_names()
            except RepositoryError as error:
                self.repository_errors += 1
                if str(error) != self._repository_error:
                    log.error("%s: keeps serving every loaded version and polls again", error)
                self._repository_error = str(error)
                return
            if self._repository_error:
                log.info("repository %s readable again: reconciling", self._repository.root)
                self._repository_error = ""
            self._reconcile([n for n in names if n not in self._held])

    def _reconcile(self, names: list[str]) -> None:
        try:
            for name in names:
                self._reconcile_model(name)
            for name in [n for n in self._models if n not in names]:
                before = self._routed(name)
                if name in self._held:
                    log.warning(
                        "model %s unloaded on request: it serves again once loaded", name, extra=log_fields(model=name)
                    )
                    cause, reason = EXPLICIT, "unloaded on request"
                else:
                    log.warning("model %s left the repository: unloading it", name, extra=log_fields(model=name))
                    cause, reason = MODEL_REMOVED, "the model's folder left the repository"
                for key in [k for k in self._versions if k[0] == name]:
                    self._unload(*key)
                del self._models[name]
                if before is not None:
                    action = "unload_model" if cause == EXPLICIT else "route"
                    self._audit_route(RouteChange(name, before, None, cause, reason), action)
        finally:
            self._update_readiness()

    def _reconcile_model(self, name: str) -> None:
        model = self._models.setdefault(name, _Model(name, self._repository.root / name))
        try:
            entry = self._repository.entry(name)
            policy = load_policy(entry.path)
        except (ConfigError, PolicyError, OSError) as error:
            if str(error) != model.error:
                log.error("model %s: %s (keeps serving what it served)", name, error, extra=log_fields(model=name))
            model.error = str(error)
            return
        if model.unwritten is not None:
            if policy == model.unwritten:
                policy = model.policy  # the rollback this server could not write holds while the file is the same
            else:
                log.warning(
                    "model %s: rollout.yaml changed: it replaces the rollback this server could not write",
                    name,
                    extra=log_fields(model=name),
                )
                model.unwritten = None
        if model.config is not None and entry.config != model.config:
            # Versions loaded from now on use the new config (batching, instances, signature); loaded ones
            # keep theirs until reloaded (admin unload + load, or a restart), and FAILED ones are retried.
            log.info(
                "model %s: config.yaml changed: versions loaded from now on use it", name, extra=log_fields(model=name)
            )
            for (n, v), status in list(self._versions.items()):
                if n == name and status.state == VersionState.FAILED:
                    del self._versions[(n, v)]
        policy_changed = model.config is not None and policy != model.policy
        model.config, model.policy, model.error = entry.config, policy, ""
        wanted = self._wanted(entry, policy)
        for version in wanted:
            self._ensure_loaded(entry, version)
        self._fall_back(entry, wanted)
        self._reroute(entry, policy_changed)
        self._unload_unwanted(entry, wanted)

    def _fall_back(self, entry: ModelEntry, wanted: list[int]) -> None:
        """With no version of the model serving or AVAILABLE, loads the newest other version on disk that
        loads: a bad new version must not leave a model with nothing (at start-up, nothing else is)."""
        if self._stable_version(entry.name) is not None or self._available(entry.name):
            return
        for version in sorted(set(entry.versions) - set(wanted), reverse=True):
            self._ensure_loaded(entry, version)
            if self._versions[(entry.name, version)].state == VersionState.AVAILABLE:
                log.warning(
                    "%s: no wanted version %s loads: serving version %d instead",
                    entry.name,
                    wanted,
                    version,
                    extra=log_fields(model=entry.name, version=version),
                )
                return

    def _wanted(self, entry: ModelEntry, policy: RolloutPolicy) -> list[int]:
        chosen = set(entry.config.version_policy.select(entry.versions))
        chosen |= policy.versions() & set(entry.versions)
        return sorted(chosen)

    def _ensure_loaded(self, entry: ModelEntry, version: int) -> None:
        key = (entry.name, version)
        status = self._versions.get(key)
        signature = file_signature(entry.version_dir(version))
        if status is not None and (status.state != VersionState.FAILED or status.signature == signature):
            return
        self._load(entry, version, signature)

    def _load(self, entry: ModelEntry, version: int, signature: tuple[float, ...]) -> None:
        key = (entry.name, version)
        version_dir = entry.version_dir(version)
        note = integer_kernels_note(version_dir)
        status = VersionStatus(entry.name, version, VersionState.LOADING, signature=signature, integer_kernels=note)
        self._versions[key] = status
        started = time.perf_counter()
        try:
            servable = load_checked(self._pool, entry, version, self._tenants)
        except Exception as error:
            status.state, status.reason, status.since = VersionState.FAILED, str(error), time.time()
            log.error(
                "%s version %d FAILED: %s",
                entry.name,
                version,
                error,
                extra=log_fields(model=entry.name, version=version),
            )
            self._audit_failure(entry.name, version, str(error), signature)
            return
        # The Servable first: a request routed to the version (pinned, at once) must find it.
        self._servables = MappingProxyType({**self._servables, key: servable})
        servable.register(self.registry)
        status.state, status.servable, status.since = VersionState.AVAILABLE, servable, time.time()
        log.info(
            "%s version %d AVAILABLE (loaded, warmed up, parity checked in %.2f s) from %s",
            entry.name,
            version,
            time.perf_counter() - started,
            version_dir,
            extra=log_fields(model=entry.name, version=version),
        )

    def _audit_failure(self, name: str, version: int, reason: str, signature: tuple[float, ...]) -> None:
        if self._failures_audited.get((name, version)) == (reason, signature):
            return
        self._failures_audited[(name, version)] = (reason, signature)
        self.audit.log(name).append(
            AuditEntry(name, "watcher", "version_failed", reason=reason, figures={"version": version})
        )

    # ---- routing ------------------------------------------------------------------------------------

    def _available(self, name: str) -> list[int]:
        return sorted(v for (n, v), s in self._versions.items() if n == name and s.state == VersionState.AVAILABLE)

    def _routable(self, entry: ModelEntry) -> list[int]:
        """The AVAILABLE versions still on disk (a version removed from the repository leaves the route); all
        AVAILABLE ones if none is, so that a model keeps serving what it has rather than nothing."""
        available = self._available(entry.name)
        return [v for v in available if v in entry.versions] or available

    def _failed(self, name: str) -> dict[int, str]:
        return {v: s.reason for (n, v), s in self._versions.items() if n == name and s.state == VersionState.FAILED}

    def _routed(self, name: str) -> core.RolloutRoute | None:
        route = self.registry.rollout(name)
        return route if route.stable else None

    def _stable_version(self, name: str) -> int | None:
        stable = self.registry.rollout(name).stable
        return stable or None

    def _reroute(self, entry: ModelEntry, policy_changed: bool = False) -> None:
        """Applies the model's route and audits a change of it with its implicit cause (route_change.py)."""
        name = entry.name
        before = self._routed(name)
        after = self._apply_route(entry)
        if after is None:
            return
        model = self._models[name]
        context = RouteContext(
            policy=model.policy,
            policy_changed=policy_changed,
            latest_serves=model.config is not None and model.config.latest_serves,
            on_disk=frozenset(entry.versions),
            failed=self._failed(name),
        )
        cause = implicit_cause(before, after, context)
        if cause is not None:
            self._audit_route(RouteChange(name, before, after, *cause))

    def _audit_route(self, change: RouteChange, action: str = "route") -> None:
        log.warning("%s route changed: %s", change.model, change.describe(), extra=log_fields(model=change.model))
        actor = "watcher" if change.cause != EXPLICIT else "admin"
        entry = AuditEntry(change.model, actor, action, change.reason, cause=change.cause, route=change.record())
        self.audit.log(change.model).append(entry)

    def _apply_route(self, entry: ModelEntry) -> core.RolloutRoute | None:
        """Routes the model's traffic as its policy says among the versions that are AVAILABLE and on disk (as
        `entry`, the repository read by the caller, lists them); the new route if it changed, else None."""
        name = entry.name
        model = self._models[name]
        available = self._routable(entry)
        if not available:
            return None
        latest_serves = model.config is not None and model.config.latest_serves
        route = route_for(model.policy, available, self._stable_version(name), latest_serves)
        changed = not same_route(self.registry.rollout(name), route)
        if changed:
            self.registry.set_rollout(name, route)
            log.info("%s routed: %s", name, describe_route(route), extra=log_fields(model=name))
        compared = {route.stable, route.canary, route.shadow} - {0}
        for (n, v), servable in self._servables.items():
            if n == name:
                servable.stats.record_scores = len(compared) > 1 and v in compared
                servable.stats.enabled = self.options.metrics or servable.stats.record_scores
        return route if changed else None

    def _unload_unwanted(self, entry: ModelEntry, wanted: list[int]) -> None:
        route = self.registry.rollout(entry.name)
        keep = set(wanted) | {route.stable, route.canary, route.shadow}
        for key, status in list(self._versions.items()):
            if key[0] != entry.name or key[1] in keep:
                continue
            if status.state == VersionState.FAILED and key[1] in entry.versions:
                continue  # keep the failure visible while its files are there
            self._unload(*key)

    def _on_disk_versions(self, name: str) -> tuple[int, ...]:
        try:
            return self._repository.entry(name).versions
        except (ConfigError, OSError):
            return ()

    def _unload(self, name: str, version: int) -> None:
        status = self._versions.get((name, version))
        if status is None:
            return
        servable = status.servable
        if servable is None:
            del self._versions[(name, version)]
            return
        status.state, status.since = VersionState.UNLOADING, time.time()
        release = self.registry.remove(name, version)
        started = time.perf_counter()
        if not release.wait(self.options.drain_timeout_s):
            log.warning(
                "%s version %d: requests still hold it after %.0f s: closing its queue anyway",
                name,
                version,
                self.options.drain_timeout_s,
                extra=log_fields(model=name, version=version),
            )
        # Only now: a request routed before the removal finds its Servable until it is done.
        self._servables = MappingProxyType({k: s for k, s in self._servables.items() if k != (name, version)})
        servable.unload(self._pool)  # runs whatever is still queued, then frees the sessions
        del self._versions[(name, version)]
        log.info(
            "%s version %d unloaded (drained in %.3f s)",
            name,
            version,
            time.perf_counter() - started,
            extra=log_fields(model=name, version=version),
        )

    # ---- admin operations --------------------------------------------------------------------------

    def set_policy(
        self,
        name: str,
        policy: RolloutPolicy,
        actor: str,
        action: str,
        reason: str = "",
        figures: dict | None = None,
        write_required: bool = True,
    ) -> RolloutPolicy:
        """Applies a rollout policy now (loading what it names), writes rollout.yaml, audits it. Where rollout.yaml
        cannot be written: FAILED_PRECONDITION and nothing changed, or with `write_required` False (a guardrail
        rollback) applied on this server only, and said so (the module's docstring says why)."""
        with self._lock:
            model = self._known(name)
            entry = self._repository.entry(name)
            missing = sorted(policy.versions() - set(entry.versions))
            if missing:
                raise RequestError(
                    StatusCode.NOT_FOUND, f"rollout: model '{name}' has no version {missing[0]} in the repository"
                )
            for version in sorted(policy.versions()):
                self._ensure_loaded(entry, version)
                status = self._versions[(name, version)]
                if status.state == VersionState.FAILED:
                    raise RequestError(
                        StatusCode.FAILED_PRECONDITION,
                        f"rollout: {name} version {version} is FAILED: {status.reason}",
                    )
            before, routed = model.policy, self._routed(name)
            unwritten = self._write_policy(entry, model, policy, write_required)
            if unwritten:
                reason = f"{reason}; {unwritten}" if reason else unwritten
                log.error("%s %s: %s", name, action, unwritten, extra=log_fields(model=name))
            model.policy = policy
            after = self._apply_route(entry)
            self._unload_unwanted(entry, self._wanted(entry, policy))
            route = route_record(routed, after) if after is not None else None
            self.audit.log(name).append(AuditEntry.change(name, actor, action, before, policy, reason, figures, route))
            log.info("%s rollout (%s by %s): %s", name, action, actor, policy.summary(), extra=log_fields(model=name))
            self._update_readiness()
            return policy

    def _write_policy(self, entry: ModelEntry, model: _Model, policy: RolloutPolicy, write_required: bool) -> str:
        """Writes rollout.yaml; "" once written, else (not `write_required`) why the policy is this server's only.
        A write refused with `write_required` raises FAILED_PRECONDITION, after unloading what was loaded for it."""
        try:
            save_policy(entry.path, policy)
        except OSError as error:
            why = f"{policy_path(entry.path)} cannot be written ({error.strerror or error})"
            if write_required:
                self._unload_unwanted(entry, self._wanted(entry, model.policy))
                raise RequestError(
                    StatusCode.FAILED_PRECONDITION,
                    f"rollout: {why}: nothing changed; change rollout.yaml where the repository is written",
                ) from error
            if model.unwritten is None:
                model.unwritten = model.policy  # what the file holds, as last read or written
            return (
                f"applied on this server only: {why}; other servers and a restart follow rollout.yaml until it changes"
            )
        model.unwritten = None
        return ""

    def audit_log(self, name: str) -> AuditLog:
        """The model's audit log, wherever the options put it (NOT_FOUND for a model not served)."""
        with self._lock:
            self._known(name)
            return self.audit.log(name)

    def policy(self, name: str) -> RolloutPolicy:
        with self._lock:
            return self._known(name).policy

    def load_version(self, name: str, version: int) -> VersionStatus:
        """Loads (or retries a FAILED) version now, without routing traffic to it."""
        with self._lock:
            self._known(name)
            entry = self._repository.entry(name)
            if version not in entry.versions:
                raise RequestError(StatusCode.NOT_FOUND, f"model '{name}' has no version {version} on disk")
            status = self._versions.get((name, version))
            if status is None or status.state == VersionState.FAILED:
                self._load(entry, version, file_signature(entry.version_dir(version)))
            self._reroute(entry)
            self._update_readiness()
            return self._versions[(name, version)]

    def unload_version(self, name: str, version: int) -> None:
        with self._lock:
            route = self.registry.rollout(name)
            if version in (route.stable, route.canary, route.shadow):
                raise RequestError(
                    StatusCode.FAILED_PRECONDITION,
                    f"{name} version {version} is in the rollout ({describe_route(route)}): change the rollout first",
                )
            if (name, version) not in self._versions:
                raise RequestError(StatusCode.NOT_FOUND, f"{name} version {version} is not loaded")
            self._unload(name, version)

    def unload_model(self, name: str) -> None:
        """Unloads every version of a model of the repository and keeps it unloaded (left out of readiness)
        until load_model: an operator's unload (KServe v2's RepositoryModelUnload) that the next poll of the
        repository does not undo."""
        with self._lock:
            if name not in self._models and name not in self._held:
                self._known(name)  # NOT_FOUND naming the models known
            self._held.add(name)
            self.reconcile()
            if name in self._models:  # the repository could not be read: nothing changed
                self._held.discard(name)
                raise RequestError(
                    StatusCode.UNAVAILABLE, f"model '{name}': {self._repository_error}; nothing was unloaded"
                )

    def load_model(self, name: str) -> None:
        """Reads the repository now and serves the model again if it was unloaded (KServe v2's
        RepositoryModelLoad): NOT_FOUND if the repository has no such model, FAILED_PRECONDITION with the
        reasons if no version of it serves afterwards."""
        with self._lock:
            held = name in self._held
            self._held.discard(name)
            self.reconcile()
            model = self._known(name)
            routed = self._routed(name)
            if held and routed is not None:
                self._audit_route(RouteChange(name, None, routed, EXPLICIT, "loaded on request"), "load_model")
            if self.registry.rollout(name).stable == 0:
                failed = [f"version {v}: {s.reason}" for (n, v), s in sorted(self._versions.items()) if n == name]
                why = "; ".join([*([model.error] if model.error else []), *failed]) or "no version on disk"
                raise RequestError(StatusCode.FAILED_PRECONDITION, f"model '{name}' has no version that serves: {why}")

    def held(self) -> list[str]:
        """The models unloaded on request."""
        with self._lock:
            return sorted(self._held)

    def _known(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise RequestError(StatusCode.NOT_FOUND, f"model '{name}' is not in the repository (known: {known})")
        return model

    def describe(self) -> list[dict]:
        """Every model: its versions with their state, its route and policy, and any config error."""
        with self._lock:
            out = []
            for name, model in sorted(self._models.items()):
                route = self.registry.rollout(name)
                versions = [
                    {
                        "version": v,
                        "state": s.state.value,
                        "reason": s.reason,
                        "since": s.since,
                        "role": route_role(route, v, with_share=True),
                        "integer_kernels": s.integer_kernels,
                    }
                    for (n, v), s in sorted(self._versions.items())
                    if n == name
                ]
                out.append(
                    {
                        "model": name,
                        "versions": versions,
                        "on_disk": list(self._on_disk_versions(name)),
                        "policy": model.policy.model_dump(mode="json"),
                        "route": route_summary(route),
                        "error": model.error,
                    }
                )
            return out

    # ---- guardrails --------------------------------------------------------------------------------

    def _comparisons(self) -> list[Comparison]:
        out = []
        for name, model in list(self._models.items()):
            route = self.registry.rollout(name)
            stable = self._servables.get((name, route.stable))
            if stable is None:
                continue
            for role, version in (("canary", route.canary), ("shadow", route.shadow)):
                candidate = self._servables.get((name, version)) if version else None
                if candidate is not None:
                    out.append(
                        Comparison(
                            name,
                            role,
                            stable.stats,
                            candidate.stats,
                            model.policy.guardrails,
                            (name, role, route.stable, version),
                        )
                    )
        return out

    def _on_breach(self, comparison: Comparison, verdict: Verdict) -> None:
        name, role = comparison.model, comparison.role
        with self._lock:
            policy = self._models[name].policy
            current = policy.canary if role == "canary" else policy.shadow
            if current is None or current.version != comparison.key[3]:
                return  # already changed meanwhile
            rolled_back = policy.model_copy(update={role: None})
            self.set_policy(
                name,
                rolled_back,
                "guardrail",
                "guardrail_rollback",
                reason=f"{role} {current.version}: " + "; ".join(verdict.reasons),
                figures=verdict.figures,
                write_required=False,  # a breaching candidate stops serving here even if the file is read-only
            )
