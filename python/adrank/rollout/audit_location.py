"""AuditLocation: where each model's rollout audit log (audit.py) is kept — outside the model repository
unless asked, so a server can serve a read-only or shared repository and never writes into it.

The `--audit-log` option of `adrank serve` and of the rollout commands (`adrank models / rollout / promote /
rollback`) takes one of:
- a directory: each model's log is `<directory>/<model>.jsonl` (created on the first entry; a relative
  path is from the working directory, and a directory named `repository` is written `./repository`);
- `repository`: the old layout, `<repository>/<model>/rollout_history.jsonl`, inside the repository;
- nothing (the default): `$XDG_STATE_HOME/adrank/audit/<repository folder name>-<8 hex digits>/` (XDG_STATE_HOME
  defaulting to `~/.local/state`). The hex digits hash the repository's absolute path, so two repositories
  with a model of the same name never share a log, and a server and the CLI run by the same user on the
  same repository — whatever their working directories — read and append the same file.

One directory per repository rather than one file for all: `adrank models --history` and the admin API's
History read one model's entries without parsing every model's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from adrank.rollout.audit import HISTORY_FILE, AuditLog

IN_REPOSITORY = "repository"  # the --audit-log value that keeps the log inside the repository


@dataclass(frozen=True)
class AuditLocation:
    repository: Path
    directory: Path | None  # None: inside the repository, beside each model's rollout.yaml

    @staticmethod
    def from_option(value: str | Path | None, repository: Path) -> AuditLocation:
        """The location `--audit-log value` names for `repository` (None: the default)."""
        if value is None or str(value) == "":
            return AuditLocation(repository, default_directory(repository))
        if str(value) == IN_REPOSITORY:
            return AuditLocation(repository, None)
        return AuditLocation(repository, Path(value))

    def file(self, model: str) -> Path:
        if self.directory is None:
            return self.repository / model / HISTORY_FILE
        return self.directory / f"{model}.jsonl"

    def log(self, model: str) -> AuditLog:
        return AuditLog(self.file(model))


def default_directory(repository: Path) -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    absolute = repository.resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:8]
    return Path(state) / "adrank" / "audit" / f"{absolute.name}-{digest}"
