"""Where the rollout commands (`adrank models / rollout / promote / rollback`) act: a running server,
through its admin API, or a repository's files directly.

- ServerTarget (admin_client.py, beside the admin service it calls: rollout/ knows no transport): a running
  server's admin API with the bearer token. The server applies the change at once (loading a version it names
  first), writes rollout.yaml and audits it.
- RepositoryTarget: rollout.yaml in the repository, audited where `--audit-log` says (audit_location.py: by
  default the same per-user directory outside the repository a server on it uses). Servers watching the
  repository apply the change at their next poll; versions have no server state here, only what is on disk.
  A repository whose rollout.yaml cannot be written (read-only) refuses the change with a TargetError.

Both take the same changes (rollout/changes.py) and answer the same shapes: `models()` a list of dicts
(model, versions with state, role and integer_kernels (meta.json's note on int8 nodes that saturate without
VNNI, empty if none), on_disk, policy, error), `history()` AuditEntry lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adrank.repository.layout import ModelRepository
from adrank.repository.meta import integer_kernels_note
from adrank.rollout.audit import AuditEntry
from adrank.rollout.audit_location import AuditLocation
from adrank.rollout.policy import RolloutPolicy, load_policy, policy_path, save_policy
from adrank.rollout.target_error import TargetError

__all__ = ["RepositoryTarget", "TargetError"]


class RepositoryTarget:
    def __init__(self, root: Path, audit: AuditLocation | None = None) -> None:
        self.repository = ModelRepository(root)
        self.audit = audit or AuditLocation.from_option(None, root)

    def _dir(self, name: str) -> Path:
        if name not in self.repository.model_names():
            raise TargetError(f"model '{name}' is not in {self.repository.root}")
        return self.repository.root / name

    def models(self) -> list[dict[str, Any]]:
        out = []
        for name in self.repository.model_names():
            entry = self.repository.entry(name)
            policy = load_policy(entry.path)
            out.append(
                {
                    "model": name,
                    "versions": [
                        {
                            "version": v,
                            "state": "ON DISK",
                            "reason": "",
                            "role": _role(policy, v, entry.versions),
                            "integer_kernels": integer_kernels_note(entry.version_dir(v)),
                        }
                        for v in entry.versions
                    ],
                    "on_disk": list(entry.versions),
                    "policy": policy.model_dump(mode="json"),
                    "error": "",
                }
            )
        return out

    def policy(self, name: str) -> RolloutPolicy:
        return load_policy(self._dir(name))

    def history(self, name: str, limit: int | None = None) -> list[AuditEntry]:
        self._dir(name)
        return self.audit.log(name).entries(limit)

    def stable_now(self, name: str) -> int | None:
        """What servers route as stable: the policy's, else the latest version on disk."""
        policy = self.policy(name)
        versions = self.repository.entry(name).versions
        return policy.stable if policy.stable is not None else (versions[-1] if versions else None)

    def apply(self, name: str, policy: RolloutPolicy, action: str, actor: str, reason: str) -> RolloutPolicy:
        path = self._dir(name)
        on_disk = set(self.repository.entry(name).versions)
        missing = sorted(policy.versions() - on_disk)
        if missing:
            raise TargetError(f"model '{name}' has no version {missing[0]} in {self.repository.root}")
        before = load_policy(path)
        try:
            save_policy(path, policy)
        except OSError as error:  # a read-only repository (a mount, or not this user's): the command's mistake
            raise TargetError(
                f"{policy_path(path)} cannot be written ({error.strerror or error}): nothing changed; roll out where"
                " the repository is written"
            ) from error
        self.audit.log(name).append(AuditEntry.change(name, actor, action, before, policy, reason))
        return policy


def _role(policy: RolloutPolicy, version: int, on_disk: tuple[int, ...]) -> str:
    stable = policy.stable if policy.stable is not None else (on_disk[-1] if on_disk else None)
    if version == stable:
        return "stable"
    if policy.canary is not None and policy.canary.version == version:
        return f"canary {policy.canary.percent:g} %"
    if policy.shadow is not None and policy.shadow.version == version:
        return "shadow"
    return ""
