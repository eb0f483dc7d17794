"""What a publish does to the servers' routing, and the line that says so.

Publishing never changes what serves without saying so (issue 34):
- A model that holds new versions back (config.yaml `latest_serves: false`, the default) and whose rollout.yaml
  names no stable version gets `stable: <the version serving now>` pinned in rollout.yaml right before the new
  version becomes visible. A server then loads and warms the new version but routes nothing to it until
  `adrank promote` or a canary does — and a server started later reads the same pin, so a restart does not
  promote the newest version behind anyone's back either. The pin is audited (action `pin_stable`, cause
  explicit, actor the publisher) once the version is in place; a publish refused at its last step (the rename)
  puts rollout.yaml back as it was, so a refused publish still leaves the repository as it found it.
- A model that opts into `latest_serves: true` (TF Serving's and Triton's default) gets no pin: its servers
  route to the new version once it is AVAILABLE on each of them.
- `expected_route` is the one line `adrank publish` prints: what the servers route once they have loaded the
  new version, from the same rule the servers use (rollout/routes.py: route_for).

Not thread-safe across processes beyond what rollout.yaml's atomic replace gives: a rollout command racing a
publish on one model may overwrite the other's change (conditional writes are the object-store issue's).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adrank.repository.publish_error import PublishError
from adrank.rollout.audit import AuditEntry
from adrank.rollout.audit_location import AuditLocation
from adrank.rollout.policy import PolicyError, RolloutPolicy, load_policy, policy_path, save_policy

if TYPE_CHECKING:
    from adrank.repository.layout import ModelEntry


@dataclass(frozen=True)
class Pin:
    """rollout.yaml's stable pinned by a publish: what it was (to audit, or to put back)."""

    model_dir: Path
    before: RolloutPolicy
    after: RolloutPolicy
    file_existed: bool

    def undo(self) -> None:
        if self.file_existed:
            save_policy(self.model_dir, self.before)
        else:
            policy_path(self.model_dir).unlink(missing_ok=True)

    def audit(self, location: AuditLocation, model: str, version: int, actor: str | None) -> None:
        reason = (
            f"publish of version {version}: stable pinned to {self.after.stable}, which serves now, so that version"
            f" {version} takes no traffic until promoted (config.yaml: latest_serves: false)"
        )
        entry = AuditEntry.change(model, actor or getpass.getuser(), "pin_stable", self.before, self.after, reason)
        location.log(model).append(entry)


def pin_stable(entry: ModelEntry, current: int | None) -> Pin | None:
    """Pins rollout.yaml's stable to `current` when the model holds new versions back and names no stable one;
    None when nothing needed pinning (a first version, `latest_serves`, a stable already named)."""
    if current is None or entry.config.latest_serves:
        return None
    policy = _policy(entry)
    if policy.stable is not None:
        return None
    pinned = policy.model_copy(update={"stable": current})
    existed = policy_path(entry.path).is_file()
    save_policy(entry.path, pinned)
    return Pin(entry.path, policy, pinned, existed)


def expected_route(entry: ModelEntry, version: int, current: int | None, loaded: bool) -> str:
    """What the servers route once each has loaded `version` (the publish's; `loaded`: the config's
    version_policy selects it), in one line."""
    from adrank.rollout.routes import describe_route, route_for

    policy = _policy(entry)
    versions = sorted({*entry.versions, version})
    route = route_for(policy, versions, current, entry.config.latest_serves)
    line = f"servers will route {entry.name}: {describe_route(route)}"
    if version in (route.stable, route.canary, route.shadow):
        if current is None:
            return f"{line} (its first version), once it is AVAILABLE"
        return f"{line} once version {version} is AVAILABLE (config.yaml: latest_serves: true)"
    waits = "loads and warms up but takes" if loaded else "is not loaded (version_policy) and takes"
    return (
        f"{line}; version {version} {waits} no traffic until `adrank promote {entry.name} {version}` or"
        f" `adrank rollout {entry.name} --canary {version} --percent P`"
    )


def _policy(entry: ModelEntry) -> RolloutPolicy:
    try:
        return load_policy(entry.path)
    except PolicyError as error:
        raise PublishError(str(error)) from error
