"""Where the rollout audit log is kept (rollout/audit_location.py): `--audit-log DIR`, `--audit-log repository`,
or the per-user default outside the repository, which a server and the rollout commands on the same
repository agree on whatever their working directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from rollout_models import ctr_repository

import adrank._core as core
from adrank.cli import main
from adrank.lifecycle.manager import ModelManager
from adrank.repository.layout import ModelRepository
from adrank.rollout.audit_location import AuditLocation


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """ctr with versions 1 and 2 on disk (the rollout commands only check that a version is there), stable 1."""
    repo = ctr_repository(tmp_path / "repo")
    shutil.copytree(repo / "ctr" / "1", repo / "ctr" / "2")
    (repo / "ctr" / "rollout.yaml").write_text("stable: 1\n")
    return repo


def entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_option_names_a_directory_the_repository_or_the_default(tmp_path: Path, audit_state: Path):
    repo = tmp_path / "a" / "models"
    assert AuditLocation.from_option(str(tmp_path / "audit"), repo).file("ctr") == tmp_path / "audit" / "ctr.jsonl"
    assert AuditLocation.from_option("repository", repo).file("ctr") == repo / "ctr" / "rollout_history.jsonl"
    default = AuditLocation.from_option(None, repo).file("ctr")
    assert default.parent.parent == audit_state / "adrank" / "audit" and default.name == "ctr.jsonl"
    assert default.parent.name.startswith("models-")
    # Another repository whose models have the same names keeps its own log.
    assert AuditLocation.from_option(None, tmp_path / "b" / "models").file("ctr") != default


def test_the_rollout_commands_audit_where_the_option_says_not_in_the_repository(repo: Path, tmp_path: Path):
    runner = CliRunner()
    audit = tmp_path / "audit"
    where = ["--repository", str(repo), "--audit-log", str(audit)]
    changed = runner.invoke(main, ["rollout", "ctr", "--shadow", "2", *where, "--actor", "ana"])
    assert changed.exit_code == 0, changed.output
    assert [(e["actor"], e["action"]) for e in entries(audit / "ctr.jsonl")] == [("ana", "shadow")]
    assert sorted(p.name for p in (repo / "ctr").iterdir()) == ["1", "2", "config.yaml", "rollout.yaml"]
    listed = json.loads(runner.invoke(main, ["models", *where, "--json", "--history"]).output)
    assert [e["action"] for e in listed[0]["history"]] == ["shadow"]
    # The default location is another log: empty.
    default = json.loads(runner.invoke(main, ["models", "--repository", str(repo), "--json", "--history"]).output)
    assert default[0]["history"] == []


def test_the_repository_option_keeps_the_old_in_repository_log(repo: Path):
    where = ["--repository", str(repo), "--audit-log", "repository"]
    changed = CliRunner().invoke(main, ["rollout", "ctr", "--canary", "2", "--percent", "5", *where])
    assert changed.exit_code == 0, changed.output
    assert [e["action"] for e in entries(repo / "ctr" / "rollout_history.jsonl")] == ["canary"]


def test_a_server_and_the_cli_share_the_default_log_from_any_working_directory(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path("..") / repo.name  # the same repository, named from another folder
    changed = CliRunner().invoke(main, ["promote", "ctr", "2", "--repository", str(relative)])
    assert changed.exit_code == 0, changed.output
    pool = core.ThreadPool(num_workers=1)
    try:
        server_log = ModelManager(pool, ModelRepository(repo)).audit.file("ctr")  # what `adrank serve` audits to
    finally:
        pool.shutdown()
    assert [e["action"] for e in entries(server_log)] == ["promote"]
