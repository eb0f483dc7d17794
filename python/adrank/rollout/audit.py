"""AuditLog: every rollout change of a model — who, when, what, why, with the figures behind it — as
JSON lines in one file per model, the record `adrank models --history` shows. Where that file is (by
default outside the model repository) is audit_location.py's concern; this class only appends and reads.

One line per change, appended with a single write() on a file opened O_APPEND, so concurrent writers
(the server's guardrails, an engineer's CLI) never interleave within a line; fsync'd, so a change that
was applied is on disk. Lines are never rewritten.

An entry: {"time": ISO-8601 UTC, "model", "actor" (a user, "guardrail", "watcher", "publish"), "action"
(canary, shadow, promote, rollback, guardrail_rollback, set_rollout, pin_stable, route, unload_model,
load_model, version_failed), "before" and "after" (rollout policies), "reason", "figures" (the guardrail's
measurements, publish figures…), "cause" and "route" for an entry that changed which versions serve: the
cause (route_change.py: explicit, or implicit: rollout_file, load_failure, version_removed, …) and the
route before and after ({"stable", "canary", "canary_percent", "shadow", "shadow_sample_percent"}, null for
nothing routed)}. Entries written before `cause` and `route` existed read with them empty.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adrank.rollout.policy import RolloutPolicy

HISTORY_FILE = "rollout_history.jsonl"  # the file's name inside the repository (--audit-log repository)


@dataclass(frozen=True)
class AuditEntry:
    model: str
    actor: str
    action: str
    reason: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    cause: str = ""
    route: dict[str, Any] | None = None

    @staticmethod
    def change(
        model: str,
        actor: str,
        action: str,
        before: RolloutPolicy,
        after: RolloutPolicy,
        reason: str = "",
        figures: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """The entry of a rollout policy changed from `before` to `after` on someone's request (`route`: what
        it changed in a server's routing, where a server applied it)."""
        return AuditEntry(
            model,
            actor,
            action,
            reason=reason,
            before=before.model_dump(mode="json"),
            after=after.model_dump(mode="json"),
            figures=figures or {},
            cause="explicit",
            route=route,
        )


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path  # the model's JSON-lines file

    def append(self, entry: AuditEntry) -> None:
        line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)  # the audit directory's first entry creates it
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self, limit: int | None = None) -> list[AuditEntry]:
        """Oldest first; the last `limit` when given. A torn last line (a crash mid-write) is skipped."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries: list[AuditEntry] = []
        for line in lines:
            try:
                entries.append(AuditEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return entries[-limit:] if limit else entries
