"""The adrank command line."""

from __future__ import annotations

from click.testing import CliRunner

from adrank.cli import find_models, main


def test_serve_with_an_empty_repository_says_so_and_succeeds(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no models yet" in result.output


def test_models_are_the_folders_with_a_config(tmp_path):
    (tmp_path / "ctr").mkdir()
    (tmp_path / "ctr" / "config.yaml").write_text("name: ctr\n")
    (tmp_path / "notes").mkdir()
    assert find_models(tmp_path) == ["ctr"]
    assert find_models(tmp_path / "missing") == []
