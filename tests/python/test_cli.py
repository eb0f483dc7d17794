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


def test_embed_writes_the_ad_embeddings_the_relevance_model_scores_against(tmp_path):
    import json

    import numpy as np

    from served import MODELS

    golden = json.loads((MODELS / "relevance" / "1" / "meta.json").read_text())["golden"]["inputs"]
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
