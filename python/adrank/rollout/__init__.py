"""Safe rollout: the rollout policy of a model (stable, canary, shadow), the guardrails that compare a
candidate with stable and roll it back, and the audit log of every change (DESIGN.md, Rollout)."""

from adrank.rollout.audit import AuditEntry, AuditLog
from adrank.rollout.policy import (
    CanaryPolicy,
    GuardrailPolicy,
    PolicyError,
    RolloutPolicy,
    ShadowPolicy,
    load_policy,
    save_policy,
)

__all__ = [
    "AuditEntry",
    "AuditLog",
    "CanaryPolicy",
    "GuardrailPolicy",
    "PolicyError",
    "RolloutPolicy",
    "ShadowPolicy",
    "load_policy",
    "save_policy",
]
