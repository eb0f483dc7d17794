"""The adrank command line and the repository scan it relies on."""

from __future__ import annotations

import re
import shutil

import pytest
from click.testing import CliRunner

from adrank.cli import main
from adrank.repository import ConfigError, ModelRepository
from adrank.repository.layout import RepositoryError


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
    for not_a_name in (".ctr", "_ctr"):  # a folder whose name is not a model name is not a model
        (tmp_path / not_a_name).mkdir()
        shutil.copy(model / "config.yaml", tmp_path / not_a_name / "config.yaml")
    repository = ModelRepository(tmp_path)
    assert repository.model_names() == ["ctr"]
    assert repository.entry("ctr").versions == (1, 3, 12)  # a publish's temporary folder is invisible
    with pytest.raises(ConfigError, match=r"'\.\./ctr' is not a model name"):
        ModelRepository(tmp_path / "x").entry("../ctr")


def test_a_repository_that_cannot_be_listed_is_an_error_not_an_empty_repository(tmp_path):
    for root in (tmp_path / "missing", tmp_path / "a-file"):
        (tmp_path / "a-file").write_text("")
        with pytest.raises(RepositoryError, match=re.escape(f"repository {root}: cannot read it")):
            ModelRepository(root).model_names()


@pytest.mark.parametrize(
    "command",
    [
        ["serve"],
        ["models"],
        ["models", "--json"],
        ["rollout", "ctr", "--canary", "2", "--percent", "5"],
        ["promote", "ctr", "2"],
        ["embed", "-o", "x.npy", "-"],
    ],
)
def test_a_missing_repository_exits_non_zero_with_one_line(tmp_path, command):
    missing = tmp_path / "nonexistent"
    result = CliRunner().invoke(main, [*command, "--repository", str(missing)], input="an ad\n")
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [f"Error: repository {missing}: cannot read it: No such file or directory"]


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["serve", "--workers", "-1"], "'--workers': -1 is not in the range x>=0"),
        (["serve", "--grpc-port", "70000"], "'--grpc-port': 70000 is not in the range 0<=x<=65535"),
        (["serve", "--poll-interval", "-2"], "'--poll-interval': -2.0 is not in the range x>=0"),
        (["models", "../../x"], "'../../x' is not a model name"),
        (["promote", "a/b", "1"], "'a/b' is not a model name"),
        (["embed", "--model", "..", "-o", "x.npy", "-"], "'..' is not a model name"),
    ],
)
def test_bad_arguments_exit_non_zero_naming_the_option(tmp_path, arguments, complaint):
    result = CliRunner().invoke(main, [*arguments, "--repository", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert complaint in result.output.splitlines()[-1], result.output


def test_embed_writes_the_ad_embeddings_the_relevance_model_scores_against(tmp_path):
    import json

    import numpy as np
    from references import version_dir

    from served import MODELS

    golden = json.loads((version_dir("relevance") / "meta.json").read_text())["golden"]["inputs"]
    texts = tmp_path / "ads.txt"
    texts.write_text("\n".join(golden["ad_text"]) + "\n\n")  # blank lines are skipped
    out = tmp_path / "ads.npy"
    args = ["embed", "--repository", str(MODELS), "--model", "relevance", str(texts), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    embeddings = np.load(out)
    assert embeddings.shape == (len(golden["ad_text"]), 384) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(embeddings - np.array(golden["ad_embedding"], np.float32))) <= 1e-5


def test_embed_refuses_a_model_version_that_does_not_exist(tmp_path):
    from served import MODELS

    texts = tmp_path / "ads.txt"
    texts.write_text("an ad\n")
    args = ["embed", "--repository", str(MODELS), "--version", "99", str(texts), "-o", str(tmp_path / "x.npy")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "no version 99" in result.output
