"""RolloutPolicy: the typed schema of a model's `rollout.yaml` — which version is stable, which one is a
canary on a share of the traffic, which one shadows it, and the guardrails that roll either back.

    stable: 3                       # absent: the version serving now keeps serving (at start-up the
                                    # newest AVAILABLE); config.yaml's latest_serves: the newest (routes.py)
    canary: {version: 4, percent: 5}
    shadow: {version: 5, sample_percent: 100}
    guardrails: {window_s: 60, max_latency_ratio: 1.5, max_error_rate: 0.01, max_psi: 0.25}

The server applies the file when it changes (the repository watcher) and writes it when the admin API
or a guardrail changes the rollout, so a restart serves what was last decided. `save_policy` replaces
the file atomically (temporary file, fsync, rename): a reader sees the old policy or the new one.

Contract: policies are immutable values; loading validates in one step (PolicyError names the file and
the field) and nothing of a bad file is applied.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adrank.config_file import parse_yaml, yaml_problem
from adrank.rollout.summary import summary

ROLLOUT_FILE = "rollout.yaml"


class PolicyError(ValueError):
    """A rollout that cannot be applied; the message names the file or the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanaryPolicy(_Strict):
    version: int = Field(ge=1)
    # Of the routing keys (request routing_key, else request id): 0.01 % steps (cpp/model_registry.h).
    percent: float = Field(ge=0, le=100)


class ShadowPolicy(_Strict):
    version: int = Field(ge=1)
    # Of the requests mirrored; below 100 halves the shadow's cost on a busy replica and still fills the
    # guardrail's window within seconds at production rates.
    sample_percent: float = Field(100.0, ge=0, le=100)


class GuardrailPolicy(_Strict):
    """When a canary or shadow is rolled back, compared with stable over the last `window_s` seconds."""

    enabled: bool = True
    # One minute: long enough for a few thousand requests at modest rates, short enough to act fast.
    window_s: float = Field(60.0, gt=0, le=3600)
    interval_s: float = Field(1.0, gt=0, le=60)
    # No verdict before the candidate has this many requests in the window: a p99 of fewer is noise.
    min_requests: int = Field(200, ge=1)
    # Candidate p99 / stable p99 (service latency for a canary, compute for a shadow).
    max_latency_ratio: float = Field(1.5, gt=1)
    # Candidate failure rate minus stable's (absolute).
    max_error_rate: float = Field(0.01, ge=0, le=1)
    # Population stability index of the candidate's scores against stable's (deciles of stable's);
    # 0.1-0.25 is the usual "moderate shift", above 0.25 a major one.
    max_psi: float = Field(0.25, gt=0)


class RolloutPolicy(_Strict):
    stable: int | None = Field(None, ge=1)
    canary: CanaryPolicy | None = None
    shadow: ShadowPolicy | None = None
    guardrails: GuardrailPolicy = Field(default_factory=GuardrailPolicy)

    @model_validator(mode="after")
    def _distinct(self) -> RolloutPolicy:
        if self.stable is not None:
            for role, part in (("canary", self.canary), ("shadow", self.shadow)):
                if part is not None and part.version == self.stable:
                    raise ValueError(f"{role}: version {part.version} is the stable version")
        return self

    def versions(self) -> set[int]:
        """Every version the policy names."""
        named = {self.stable} | {p.version for p in (self.canary, self.shadow) if p is not None}
        return {v for v in named if v is not None}

    def summary(self) -> str:
        return summary(self.model_dump(mode="json"))


def policy_path(model_dir: Path) -> Path:
    return model_dir / ROLLOUT_FILE


def parse_policy(raw: object, where: str) -> RolloutPolicy:
    if raw is None:
        return RolloutPolicy()
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        return RolloutPolicy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise PolicyError(f"{where}: {problems}") from error


def load_policy(model_dir: Path) -> RolloutPolicy:
    """The model's rollout.yaml, or the default policy (no stable named) when there is none."""
    path = policy_path(model_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RolloutPolicy()
    except OSError as error:
        raise PolicyError(f"{path}: cannot read: {error}") from error
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as error:
        raise PolicyError(f"{path}: {yaml_problem(error)}") from error
    return parse_policy(raw, str(path))


def save_policy(model_dir: Path, policy: RolloutPolicy) -> None:
    """Replaces rollout.yaml atomically."""
    path = policy_path(model_dir)
    data = policy.model_dump(mode="json", exclude_none=True)
    if data.get("guardrails") == GuardrailPolicy().model_dump(mode="json"):
        del data["guardrails"]  # defaults stay implicit, so a later change of default applies
    fd, tmp = tempfile.mkstemp(prefix=".rollout-", suffix=".yaml", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(model_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
