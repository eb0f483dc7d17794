"""TenantsConfig: who may call the server, with what weight, limits and priority classes (`--tenants`).

A tenant is the caller named by a request's `x-adrank-tenant` metadata ("default" when absent). Every
model's core batcher queues each tenant apart and shares its batches between the tenants with work queued
by weight; a tenant's requests beyond its limits are refused with RESOURCE_EXHAUSTED naming it, and a
priority class above the model's default is allowed only to a tenant whose `highest_priority` reaches it
(PERMISSION_DENIED otherwise). cpp/tenants.h states each field's default and why; the same defaults hold
here. The file (YAML):

    defaults:            # every tenant not listed below (and "default" unless listed)
      weight: 1
      max_queued_rows: 0     # 0: no cap of its own, only its share of a full queue
      max_in_flight: 1024
    max_tenants: 1024
    tenants:
      ads-main: {weight: 4, highest_priority: 0}
      reports: {weight: 0.5, max_in_flight: 16}

Contract: loading is pure (reads one file) and validates everything; a bad file is a TenantsConfigError
naming the file and the field, and nothing of it is used. The config is read once, at start: the batchers
of every version loaded from then on take it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import adrank._core as core
from adrank.config_file import read_yaml

# As the core checks it (cpp/tenants.h): tenant names become metric labels.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TENANT_METADATA_KEY = "x-adrank-tenant"
_CORE_POLICY = core.TenantPolicy()
_CORE_OPTIONS = core.TenantOptions()


class TenantsConfigError(ValueError):
    """A tenants file that cannot be used; the message names the file and the field."""


class TenantPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(_CORE_POLICY.weight, gt=0)
    max_queued_rows: int = Field(_CORE_POLICY.max_queued_rows, ge=0)
    max_in_flight: int = Field(_CORE_POLICY.max_in_flight, ge=1)
    # The highest class the tenant may ask for (0 is the highest); None: none above the model's default.
    highest_priority: int | None = Field(None, ge=0)

    def to_core(self) -> core.TenantPolicy:
        policy = core.TenantPolicy()
        policy.weight = self.weight
        policy.max_queued_rows = self.max_queued_rows
        policy.max_in_flight = self.max_in_flight
        policy.highest_priority = -1 if self.highest_priority is None else self.highest_priority
        return policy


class TenantsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: TenantPolicyConfig = Field(default_factory=TenantPolicyConfig)
    max_tenants: int = Field(_CORE_OPTIONS.max_tenants, ge=1)
    tenants: dict[str, TenantPolicyConfig] = Field(default_factory=dict)

    def to_core(self) -> core.TenantOptions:
        options = core.TenantOptions()
        options.defaults = self.defaults.to_core()
        options.max_tenants = self.max_tenants
        options.tenants = {name: policy.to_core() for name, policy in self.tenants.items()}
        options.validate()
        return options


def load_tenants(path: Path) -> TenantsConfig:
    """Parses and validates a tenants file; TenantsConfigError names the file and the field."""
    config = read_yaml(path, TenantsConfig, TenantsConfigError)
    try:
        config.to_core()  # the core's own checks: tenant names, counts
    except core.CoreError as error:
        raise TenantsConfigError(f"{path}: {error}") from error
    return config
