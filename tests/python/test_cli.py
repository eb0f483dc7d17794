"""The adrank command line and the repository scan it relies on."""

from __future__ import annotations

from click.testing import CliRunner

from adrank.cli import main
from adrank.repository import ModelRepository


def test_serve_with_an_empty_repository_says_so_and_succeeds(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no models yet" in result.output


def test_models_are_the_folders_with_a_config_and_versions_the_numbered_folders(tmp_path):
    model = tmp_path / "ctr"
    for folder in ("1", "3", "12", ".tmp-4", "0", "notes"):
        (model / folder).mkdir(parents=True)
    (model / "config.yaml").write_text(
        "name: ctr\ninputs: [{name: x, dtype: float32}]\noutputs: [{name: y, dtype: float32}]\n"
    )
    (tmp_path / "notes").mkdir()
    repository = ModelRepository(tmp_path)
    assert repository.model_names() == ["ctr"]
    assert repository.entry("ctr").versions == (1, 3, 12)  # a publish's temporary folder is invisible
    assert ModelRepository(tmp_path / "missing").model_names() == []
