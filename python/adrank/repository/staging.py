"""Staging a new version of a model, and making it visible by one atomic rename.

Contract:
- A version is assembled in `<repo>/<model>/.publish-<version>-<pid>` (`staging_dir`), a folder the server
  ignores (layout.py). Every file written there is fsynced (`stage_files`, `write_json`), then the folder; then
  `rename_into_place` renames it to `<repo>/<model>/<version>` with one rename(2) and fsyncs the model folder. A
  server scanning the repository sees either no such version or the complete one.
- Versions are immutable: `new_version` refuses an existing number, and `rename_into_place` refuses a rename
  onto a version another publish created meanwhile (rename(2) fails onto a non-empty folder).
- A killed publish leaves at most its staging folder; `remove_stale_staging` removes those whose pid is not
  alive on this machine (a repository shared between machines takes publishes from one machine at a time).
- `ADRANK_PUBLISH_KILL_AT=<step>` (`KILL_ENV`) names a step of `STEPS` after which `kill_if_asked` SIGKILLs
  this process, so that the tests can kill a publish at every point between its steps.
Every refusal is a PublishError.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adrank.repository.publish_error import PublishError

if TYPE_CHECKING:
    from adrank.repository.layout import ModelEntry

# The steps of a publish, in order; ADRANK_PUBLISH_KILL_AT=<step> SIGKILLs the process right after one (tests only).
STEPS = ("checked", "copied", "loaded", "golden", "benchmarked", "meta_written", "renamed")
KILL_ENV = "ADRANK_PUBLISH_KILL_AT"
STAGING_PREFIX = ".publish-"
_STAGING_NAME = re.compile(r"^\.publish-(\d+)-(\d+)$")
MODEL_FILE = "model.onnx"


def kill_step() -> str | None:
    """The step `KILL_ENV` names, if any; checked at the start, so that a misspelt step fails the publish."""
    step = os.environ.get(KILL_ENV) or None
    if step is not None and step not in STEPS:
        raise PublishError(f"{KILL_ENV}={step!r}: not a step; the steps are {', '.join(STEPS)}")
    return step


def kill_if_asked(kill_at: str | None, step: str) -> None:
    if kill_at == step:
        os.kill(os.getpid(), signal.SIGKILL)


def new_version(entry: ModelEntry, requested: int | None) -> int:
    """The version to publish: `requested`, which must not exist yet, else one more than the highest."""
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


def staging_dir(entry: ModelEntry, version: int) -> Path:
    """This process's staging folder for `version` (not yet created)."""
    return entry.path / f"{STAGING_PREFIX}{version}-{os.getpid()}"


def remove_stale_staging(model_dir: Path) -> None:
    """Removes the temporary folders of publishes that died (a kill leaves its folder behind)."""
    for path in model_dir.iterdir():
        match = _STAGING_NAME.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)


def stage_files(source: Path, source_sha256: str, entry: ModelEntry, current: int | None, staging: Path) -> str:
    """Copies the model and the files its config names into the staging folder; returns the copy's sha256."""
    from adrank.repository.meta import sha256_file

    target = staging / MODEL_FILE
    shutil.copyfile(source, target)
    fsync_file(target)
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
        fsync_file(staging / spec.tokenizer.file)
    return sha256


def write_json(path: Path, value: dict[str, Any]) -> None:
    with path.open("w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    # A folder's entries (the names of the files in it, a rename) are durable once the folder is fsynced.
    fsync_file(path)


def rename_into_place(staging: Path, final: Path) -> None:
    # rename(2) replaces an empty folder but fails onto a non-empty one: a version that appeared meanwhile
    # (another publish) is never overwritten. An empty one would have been refused as existing at the start.
    try:
        os.rename(staging, final)
    except OSError as error:
        raise PublishError(
            f"{final}: cannot rename the staged version into place ({error.strerror}); another publish may have "
            "created this version meanwhile"
        ) from error
    fsync_dir(final.parent)


# Implementation details follow. API users need not read.


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
