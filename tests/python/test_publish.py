"""`adrank publish`: a version is visible only once validated, and then complete.

Every test publishes into a copy of the bundled ctr model's repository (version 1 with its golden meta.json).
The refusals leave the repository byte for byte as it was; a publish killed at any point leaves no version
visible, and the next publish succeeds. The latency comparison runs few reps here: the models that must be
refused by the gate are several times slower, and the others are given a generous limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from rollout_models import int8_weights, quantized_ctr

from adrank.cli import main
from adrank.cli_publish import publish_command
from adrank.publish import gates
from adrank.publish.pipeline import KILL_ENV, STEPS, PublishError, PublishOptions, publish
from adrank.repository import ModelRepository, staging
from adrank.repository.meta import load_meta, sha256_file
from served import MODELS

CTR_ONNX = MODELS / "ctr" / "1" / "model.onnx"
FAST = ["--bench-reps", "3"]  # the gate tests below use models many times slower than the noise
# Same-model publishes must not depend on how busy the machine is: the gate has its own tests.
LENIENT = [*FAST, "--max-slowdown", "3"]
# Run as the CLI runs it, in a process of its own that the kill tests can kill.
PUBLISH_MAIN = "from adrank.cli_publish import publish_command; publish_command(prog_name='adrank publish')"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS / "ctr", root / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root, files with their sha256: equal snapshots are the same repository."""
    listing = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        listing[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return listing


def versions(root: Path) -> tuple[int, ...]:
    return ModelRepository(root).entry("ctr").versions


def staging_folders(root: Path) -> list[str]:
    return [p.name for p in (root / "ctr").iterdir() if p.name.startswith(".publish-")]


def invoke(repo: Path, model_file: Path, *args: str):
    arguments = [str(model_file), "--model", "ctr", "--repository", str(repo), *args]
    return CliRunner().invoke(publish_command, arguments)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)  # valid ONNX: only the publish's own checks may refuse it
    onnx.save(model, path)
    return path


def scoring_graph(
    offset: float, dense: str = "dense", dense_type: int = TensorProto.FLOAT, width: int = 13, output: str = "ctr"
) -> onnx.ModelProto:
    """A valid model over ctr-like inputs whose score is the constant `offset`, computed from the inputs
    (0 * their sum + offset), so that no optimizer can make it a constant graph."""
    nodes = [
        helper.make_node("Cast", [dense], ["dense_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["dense_f", "axes"], ["dense_sum"], keepdims=0),
        helper.make_node("Cast", ["sparse"], ["sparse_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["sparse_f", "axes"], ["sparse_sum"], keepdims=0),
        helper.make_node("Add", ["dense_sum", "sparse_sum"], ["total"]),
        helper.make_node("Mul", ["total", "zero"], ["nil"]),
        helper.make_node("Add", ["nil", "offset"], [output]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_score",
        [
            helper.make_tensor_value_info(dense, dense_type, ["batch", width]),
            helper.make_tensor_value_info("sparse", TensorProto.INT64, ["batch", 26]),
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(offset, np.float32), "offset"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def slower_ctr(width: int = 512, layers: int = 2) -> onnx.ModelProto:
    """The ctr model plus a heavy branch that changes no score: dense -> MatMul [13, width] -> `layers` x
    (MatMul [width, width], Tanh) -> ReduceSum -> * 0 -> added to the logit before the sigmoid. The branch
    depends on the input, so ONNX Runtime cannot fold it, and Tanh keeps it finite (0 * inf would be NaN).
    About 3x (64 rows) to 10x (512 rows) the compute of ctr on one core."""
    model = onnx.load(CTR_ONNX)
    graph = model.graph
    sigmoid = graph.node[-1]
    assert sigmoid.op_type == "Sigmoid" and sigmoid.output[0] == "ctr"
    rng = np.random.default_rng(0)
    dims = [13] + [width] * (layers + 1)
    branch, x = [], "dense"
    for i in range(layers + 1):
        weight = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, f"heavy_w{i}"))
        branch.append(helper.make_node("MatMul", [x, f"heavy_w{i}"], [f"heavy_mm{i}"]))
        branch.append(helper.make_node("Tanh", [f"heavy_mm{i}"], [f"heavy_t{i}"]))
        x = f"heavy_t{i}"
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "heavy_axes"))
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "heavy_zero"))
    branch.append(helper.make_node("ReduceSum", [x, "heavy_axes"], ["heavy_sum"], keepdims=0))
    branch.append(helper.make_node("Mul", ["heavy_sum", "heavy_zero"], ["heavy_nil"]))
    branch.append(helper.make_node("Add", [sigmoid.input[0], "heavy_nil"], ["heavy_logit"]))
    sigmoid.input[0] = "heavy_logit"
    at = len(graph.node) - 1
    for offset, node in enumerate(branch):
        graph.node.insert(at + offset, node)
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def slow_model(models_dir: Path) -> Path:
    return save(slower_ctr(), models_dir / "slow.onnx")


def test_a_good_model_is_published_as_the_next_version_with_its_figures(repo: Path):
    before = load_meta(repo / "ctr" / "1" / "meta.json")
    result = invoke(repo, CTR_ONNX, *LENIENT, "--json", "--source", "test run 42")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["model"], report["version"]) == ("ctr", 2)
    assert versions(repo) == (1, 2) and not staging_folders(repo)

    folder = repo / "ctr" / "2"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.onnx"]
    meta = load_meta(folder / "meta.json")  # what a server reads parses
    assert meta.sha256 == sha256_file(folder / "model.onnx") == sha256_file(CTR_ONNX) == report["sha256"]
    raw = json.loads((folder / "meta.json").read_text())
    assert raw["created_by"] == "adrank publish"
    assert raw["integer_kernels"] == {"integer_nodes": 0, "saturation_risk": 0}  # fp32 ctr: none to check
    assert raw["source"] == {"file": str(CTR_ONNX), "sha256": meta.sha256, "description": "test run 42"}
    # The same model: the golden outputs it records are version 1's, and the tolerance is version 1's.
    assert meta.golden.inputs == before.golden.inputs and meta.golden.atol == before.golden.atol
    assert np.allclose(meta.golden.outputs["ctr"], before.golden.outputs["ctr"], atol=before.golden.atol)

    validation = raw["validation"]
    assert validation["checker"]["passed"] and validation["golden"]["rows"] == 16
    assert validation["golden"]["range"] == [0.0, 1.0]
    latency = validation["latency"]
    assert latency["current_version"] == 1 and latency["reps"] == 3 and latency["max_slowdown"] == 3
    assert [s["rows"] for s in latency["sizes"]] == [64, 256, 512]
    assert all(s["current_us"] > 0 and s["new_us"] > 0 for s in latency["sizes"])
    assert 0 < latency["ratio"] <= 3 and latency["ratio"] == report["latency"]["ratio"]


def test_the_human_report_shows_the_ratio_per_batch_size(repo: Path):
    result = invoke(repo, CTR_ONNX, *LENIENT)
    assert result.exit_code == 0, result.output
    assert "ctr version 2 published" in result.stdout
    assert "ratio" in result.stdout and "vs version 1" in result.stdout
    assert all(f" {rows} " in result.stdout for rows in (64, 256, 512))
    assert "the ONNX checker passes" in result.stderr  # the step lines go to stderr


def test_a_new_version_takes_no_traffic_publish_pins_stable_and_says_what_servers_will_route(
    repo: Path, tmp_path: Path
):
    audit = tmp_path / "audit"
    result = invoke(repo, CTR_ONNX, *LENIENT, "--audit-log", str(audit), "--actor", "alice")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((repo / "ctr" / "rollout.yaml").read_text()) == {"stable": 1}
    lines = result.stdout.splitlines()
    assert "stable pinned to version 1 in rollout.yaml" in result.stdout
    assert lines[-1] == (
        "adrank publish: servers will route ctr: stable 1; version 2 loads and warms up but takes no traffic until"
        " `adrank promote ctr 2` or `adrank rollout ctr --canary 2 --percent P`"
    )
    (entry,) = [json.loads(line) for line in (audit / "ctr.jsonl").read_text().splitlines()]
    assert (entry["action"], entry["actor"], entry["cause"]) == ("pin_stable", "alice", "explicit")
    assert (entry["before"]["stable"], entry["after"]["stable"]) == (None, 1)

    again = invoke(repo, CTR_ONNX, *LENIENT, "--audit-log", str(audit), "--json")  # stable named: no new pin
    report = json.loads(again.stdout)
    assert report["pinned_stable"] is None and report["routing"].startswith("servers will route ctr: stable 1;")
    assert len((audit / "ctr.jsonl").read_text().splitlines()) == 1


def test_a_model_whose_config_says_latest_serves_is_not_pinned_and_publish_says_the_new_version_serves(repo: Path):
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump({**config, "latest_serves": True}))
    result = invoke(repo, CTR_ONNX, *LENIENT, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not (repo / "ctr" / "rollout.yaml").exists() and report["pinned_stable"] is None
    assert report["routing"] == (
        "servers will route ctr: stable 2 once version 2 is AVAILABLE (config.yaml: latest_serves: true)"
    )


def test_a_publish_refused_at_the_rename_puts_rollout_yaml_back(repo: Path, monkeypatch: pytest.MonkeyPatch):
    before = snapshot(repo)

    def taken(folder: Path, final: Path) -> None:
        raise PublishError(f"{final}: another publish created it meanwhile")

    monkeypatch.setattr(staging, "rename_into_place", taken)
    with pytest.raises(PublishError, match="created it meanwhile"):
        publish(PublishOptions(model="ctr", onnx=CTR_ONNX, repository=repo, max_slowdown=3, bench_reps=3))
    assert snapshot(repo) == before  # no version, no staging folder, no rollout.yaml


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_a_corrupt_file_is_refused_and_the_repository_is_unchanged(repo: Path, tmp_path: Path, damage: str):
    data = CTR_ONNX.read_bytes()
    corrupt = {"truncated": data[: len(data) // 2], "random bytes": os.urandom(4096), "empty": b""}[damage]
    model_file = tmp_path / "corrupt.onnx"
    model_file.write_bytes(corrupt)
    before = snapshot(repo)
    result = invoke(repo, model_file, *FAST)
    assert result.exit_code != 0
    assert "the ONNX checker refuses it" in result.output and str(model_file) in result.output
    assert snapshot(repo) == before


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (scoring_graph(0.5, dense="dense_features"), "graph input 'dense_features'"),
        (scoring_graph(0.5, width=12), "graph input 'dense'"),
        (
            scoring_graph(0.5, dense_type=TensorProto.DOUBLE),
            "graph input 'dense' has type float64, the config says float32",
        ),
        (scoring_graph(0.5, output="score"), "output 'ctr'"),
    ],
    ids=["renamed input", "wrong width", "wrong dtype", "renamed output"],
)
def test_a_model_that_does_not_match_its_config_is_refused_naming_the_tensor(
    repo: Path, tmp_path: Path, model: onnx.ModelProto, named: str
):
    model_file = save(model, tmp_path / "mismatched.onnx")
    before = snapshot(repo)
    result = invoke(repo, model_file, *FAST)
    assert result.exit_code != 0
    assert "does not match its config" in result.output and named in result.output, result.output
    assert snapshot(repo) == before


@pytest.mark.parametrize(
    ("score", "refusal"),
    [(2.0, "row 0 is 2, outside its declared range [0.0, 1.0] (16 of 16 rows)"), (float("nan"), "not finite")],
    ids=["out of range", "NaN"],
)
def test_scores_out_of_range_or_not_finite_are_refused(repo: Path, tmp_path: Path, score: float, refusal: str):
    model_file = save(scoring_graph(score), tmp_path / "bad_scores.onnx")
    before = snapshot(repo)
    result = invoke(repo, model_file, *FAST)
    assert result.exit_code != 0
    assert "golden: output 'ctr'" in result.output and refusal in result.output, result.output
    assert snapshot(repo) == before


def test_a_valid_constant_model_passes_the_golden_check(repo: Path, tmp_path: Path):
    # The twin of the refusals above: the same graph with a score in range is published.
    model_file = save(scoring_graph(0.5), tmp_path / "half.onnx")
    result = invoke(repo, model_file, *LENIENT, "--max-slowdown", "1000")
    assert result.exit_code == 0, result.output
    assert load_meta(repo / "ctr" / "2" / "meta.json").golden.outputs["ctr"] == [0.5] * 16


def test_a_slower_model_is_refused_by_the_latency_gate_and_accepted_above_its_ratio(repo: Path, slow_model: Path):
    before = snapshot(repo)
    refused = invoke(repo, slow_model, *FAST)
    assert refused.exit_code != 0
    assert "latency: the new version takes" in refused.output and "above --max-slowdown 1.10" in refused.output
    assert "the compute time of version 1 (geometric mean of 64 rows" in refused.output, refused.output
    assert snapshot(repo) == before

    # The gate is the only reason: with a limit above its ratio the same model is published, scores unchanged.
    accepted = invoke(repo, slow_model, *FAST, "--max-slowdown", "100", "--json")
    assert accepted.exit_code == 0, accepted.output
    ratio = json.loads(accepted.stdout)["latency"]["ratio"]
    print(f"slower model: {ratio:.2f}x the compute time of ctr")
    assert ratio >= 3
    golden = load_meta(repo / "ctr" / "2" / "meta.json").golden.outputs["ctr"]
    expected = load_meta(repo / "ctr" / "1" / "meta.json").golden
    assert np.allclose(golden, expected.outputs["ctr"], atol=expected.atol)


def test_the_comparison_is_against_the_rollouts_stable_version(repo: Path, slow_model: Path):
    assert invoke(repo, slow_model, *FAST, "--max-slowdown", "100").exit_code == 0  # version 2, slow
    # Against the latest (the slow version 2) the slow model would pass; against stable version 1 it is refused.
    (repo / "ctr" / "rollout.yaml").write_text("stable: 1\ncanary: {version: 2, percent: 5}\n")
    result = invoke(repo, slow_model, *FAST)
    assert result.exit_code != 0 and "the compute time of version 1" in result.output, result.output
    (repo / "ctr" / "rollout.yaml").write_text("stable: 2\n")
    result = invoke(repo, slow_model, *FAST, "--max-slowdown", "2")
    assert result.exit_code == 0 and "vs version 2" in result.output, result.output
    assert versions(repo) == (1, 2, 3)


SATURATING_NODE = (
    "MatMulInteger 'dense_matmul' in main graph (int8 weight 'ctr_int8_weights', uint8 activations): "
    "weights span [-127, 127]: 8 bits"
)
ALLOWED_NOTE = "1 int8 node can saturate without VNNI (allowed by adrank publish --allow-int8-saturation)"


@pytest.fixture(scope="module")
def saturating_model(models_dir: Path) -> Path:
    """ctr-shaped, scores 0.5, through a MatMulInteger whose int8 weights span [-127, 127] (quantize_dynamic's
    default): it can saturate on CPUs without VNNI, whatever CPU runs this test."""
    return quantized_ctr(models_dir / "int8_8bit.onnx", int8_weights(8))


def test_a_model_whose_int8_nodes_can_saturate_without_vnni_is_refused_naming_the_node_and_the_fix(
    repo: Path, saturating_model: Path
):
    before = snapshot(repo)
    result = invoke(repo, saturating_model, *FAST)
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(
        f"Error: integer kernels: an integer node can saturate on CPUs without VNNI: {SATURATING_NODE}."
    )
    assert "adds pairs of 8-bit activation x int8 weight products in 16 bits with saturation" in line
    assert "quantize_dynamic(..., reduce_range=True) for 7-bit weights (every |w| <= 64)" in line
    assert "weight_type=QuantType.QUInt8 (U8U8)" in line
    assert line.endswith("or pass --allow-int8-saturation to publish it anyway")
    assert snapshot(repo) == before


def test_the_refusal_counts_the_nodes_and_names_the_first_few(tmp_path: Path):
    # Five MatMulIntegers on one quantised input, each by 8-bit int8 weights.
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    nodes += [helper.make_node("MatMulInteger", ["xq", f"w{i}", "xz"], [f"y{i}"], name=f"mm{i}") for i in range(5)]
    graph = helper.make_graph(
        nodes,
        "five",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.INT32, ["N", 4]) for i in range(5)],
        [numpy_helper.from_array(int8_weights(8), f"w{i}") for i in range(5)],
    )
    path = save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "five.onnx"
    )
    with pytest.raises(PublishError) as refused:
        gates.check_integer_kernels(path, allow_saturation=False)
    message = str(refused.value)
    assert message.startswith("integer kernels: 5 integer nodes can saturate on CPUs without VNNI: MatMulInteger 'mm0'")
    assert "; also 'mm1', 'mm2' and 2 more. " in message and "\n" not in message
    allowed = gates.check_integer_kernels(path, allow_saturation=True)
    assert (allowed.integer_nodes, allowed.saturation_risk, allowed.allowed) == (5, 5, True)
    assert len(allowed.nodes) == gates.RECORDED_NODES and allowed.nodes[0].startswith(
        "MatMulInteger 'mm0' in main graph"
    )


def test_allow_int8_saturation_publishes_it_and_meta_json_and_models_say_so(repo: Path, saturating_model: Path):
    result = invoke(repo, saturating_model, *LENIENT, "--max-slowdown", "1000", "--allow-int8-saturation", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["integer_kernels"] == {
        "integer_nodes": 1,
        "saturation_risk": 1,
        "allowed": True,
        "nodes": [SATURATING_NODE],
    }
    assert "integer kernels: 1 of 1 integer MatMul/Conv node can saturate without VNNI" in result.stderr
    raw = json.loads((repo / "ctr" / "2" / "meta.json").read_text())
    assert raw["integer_kernels"] == {
        "integer_nodes": 1,
        "saturation_risk": 1,
        "allowed": True,
        "by": "adrank publish --allow-int8-saturation",
        "nodes": [SATURATING_NODE],
    }
    meta = load_meta(repo / "ctr" / "2" / "meta.json")
    assert meta.integer_kernels is not None and meta.integer_kernels.note() == ALLOWED_NOTE

    # adrank models, on the repository: the note per version, in JSON and in the table (only where one has it).
    listed = CliRunner().invoke(main, ["models", "--repository", str(repo), "--json"])
    assert listed.exit_code == 0, listed.output
    (ctr,) = json.loads(listed.stdout)
    assert {v["version"]: v["integer_kernels"] for v in ctr["versions"]} == {1: "", 2: ALLOWED_NOTE}
    table = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["models", "--repository", str(repo)])
    assert table.exit_code == 0 and "integer kernels" in table.stdout and ALLOWED_NOTE in table.stdout, table.output


@pytest.mark.parametrize(
    "weights",
    [int8_weights(7), (int8_weights(8).astype(np.int16) + 128).astype(np.uint8)],
    ids=["7-bit int8 (reduce_range)", "uint8 (U8U8)"],
)
def test_7_bit_or_uint8_weights_are_published_without_the_flag(repo: Path, tmp_path: Path, weights: np.ndarray):
    model_file = quantized_ctr(tmp_path / "quantized.onnx", weights)
    result = invoke(repo, model_file, *LENIENT, "--max-slowdown", "1000")
    assert result.exit_code == 0, result.output
    assert "integer kernels: 1 integer MatMul/Conv node, none can saturate without VNNI" in result.stderr
    assert "  integer  1 integer MatMul/Conv node, none can saturate without VNNI" in result.stdout
    raw = json.loads((repo / "ctr" / "2" / "meta.json").read_text())
    assert raw["integer_kernels"] == {"integer_nodes": 1, "saturation_risk": 0}
    listed = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["models", "--repository", str(repo)])
    assert listed.exit_code == 0 and "integer kernels" not in listed.stdout, listed.output


def test_an_existing_version_is_refused(repo: Path):
    before = snapshot(repo)
    result = invoke(repo, CTR_ONNX, *FAST, "--version", "1")
    assert result.exit_code != 0
    assert "version 1 already exists" in result.output and "--version" in result.output
    assert snapshot(repo) == before
    result = invoke(repo, CTR_ONNX, *LENIENT, "--version", "7")  # a free number may skip ahead
    assert result.exit_code == 0, result.output
    assert versions(repo) == (1, 7)


def test_a_first_version_takes_golden_inputs_from_the_configs_sample_and_skips_the_comparison(repo: Path):
    golden = load_meta(repo / "ctr" / "1" / "meta.json").golden
    shutil.rmtree(repo / "ctr" / "1")
    before = snapshot(repo)
    refused = invoke(repo, CTR_ONNX, *FAST)
    assert refused.exit_code != 0 and "no golden inputs" in refused.output and "sample" in refused.output
    assert snapshot(repo) == before

    (repo / "ctr" / "sample.json").write_text(json.dumps(golden.inputs))
    config = repo / "ctr" / "config.yaml"
    config.write_text(config.read_text() + "sample: sample.json\n")
    result = invoke(repo, CTR_ONNX, *FAST, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["version"] == 1 and report["latency"] is None
    assert "latency comparison skipped" in report["latency_note"]
    assert report["golden"]["origin"].endswith("sample.json")
    meta = load_meta(repo / "ctr" / "1" / "meta.json")
    assert meta.golden.atol == 1e-5 and np.allclose(meta.golden.outputs["ctr"], golden.outputs["ctr"], atol=1e-6)


def test_an_unknown_model_and_an_unknown_kill_step_are_refused(repo: Path, monkeypatch: pytest.MonkeyPatch):
    result = CliRunner().invoke(publish_command, [str(CTR_ONNX), "--model", "nope", "--repository", str(repo)])
    assert result.exit_code != 0 and "model 'nope'" in result.output
    monkeypatch.setenv(KILL_ENV, "never")
    with pytest.raises(PublishError, match="not a step"):
        publish(PublishOptions("ctr", CTR_ONNX, repo))


@pytest.mark.parametrize("model", ["../outside", "ctr/../../outside", "/abs", ".publish-1-1"])
def test_a_model_name_that_is_a_path_is_refused_and_nothing_is_written_anywhere(repo: Path, model: str):
    # A model folder beside the repository: "../outside" would have published into it.
    outside = repo.parent / "outside"
    outside.mkdir()
    config = (repo / "ctr" / "config.yaml").read_text().replace("name: ctr", "name: outside", 1)
    (outside / "config.yaml").write_text(config)
    before, before_outside = snapshot(repo), snapshot(outside)
    result = CliRunner().invoke(publish_command, [str(CTR_ONNX), "--model", model, "--repository", str(repo)])
    assert result.exit_code == 2, result.output  # refused when parsed, as every command's model name
    line = result.output.splitlines()[-1]
    assert line.startswith(f"Error: Invalid value for '--model': {model!r} is not a model name: letters, digits"), line
    assert snapshot(repo) == before and snapshot(outside) == before_outside
    with pytest.raises(PublishError, match="is not a model name"):
        publish(PublishOptions(model, CTR_ONNX, repo))


def test_a_missing_repository_is_refused_naming_it(tmp_path: Path):
    result = CliRunner().invoke(
        publish_command, [str(CTR_ONNX), "--model", "ctr", "--repository", str(tmp_path / "no")]
    )
    assert result.exit_code == 1 and result.output.splitlines() == [
        f"Error: repository {tmp_path / 'no'}: no such folder"
    ]


def publish_process(repo: Path, model_file: Path, *args: str, kill_at: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    arguments = [str(model_file), "--model", "ctr", "--repository", str(repo), *LENIENT, *args]
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISH_MAIN, *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def assert_complete(repo: Path, version: int) -> None:
    folder = repo / "ctr" / str(version)
    assert load_meta(folder / "meta.json").sha256 == sha256_file(folder / "model.onnx")


@pytest.mark.parametrize("step", STEPS)
def test_a_publish_killed_after_any_step_leaves_no_partial_version(repo: Path, step: str):
    process = publish_process(repo, CTR_ONNX, kill_at=step)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, output.decode()
    if step == "renamed":
        assert versions(repo) == (1, 2)  # killed after the rename: the version is there, and complete
        assert_complete(repo, 2)
        return
    assert versions(repo) == (1,)
    # What a kill leaves: the invisible staging folder, once made.
    assert staging_folders(repo) == ([] if step == "checked" else [f".publish-2-{process.pid}"])

    # The next publish clears what the killed one left and succeeds.
    result = invoke(repo, CTR_ONNX, *LENIENT)
    assert result.exit_code == 0, result.output
    assert versions(repo) == (1, 2) and not staging_folders(repo)
    assert_complete(repo, 2)


def test_a_publish_killed_at_random_moments_leaves_a_complete_version_or_none(repo: Path):
    # Killed from outside at a random moment once the publish has begun writing (its staging folder exists),
    # with a longer benchmark so that most of the run lies between the first write and the rename (~0.8 s
    # here): most kills land before the rename, some after the publish has finished.
    rng = random.Random(20240601)
    interrupted = 0
    for _ in range(5):
        process = publish_process(repo, CTR_ONNX, "--bench-reps", "150")
        deadline = time.monotonic() + 60
        mine = f"-{process.pid}"  # a killed predecessor's folder stays until this publish clears it
        while not any(name.endswith(mine) for name in staging_folders(repo)) and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.0))
        process.kill()
        process.wait(timeout=60)
        interrupted += process.returncode == -signal.SIGKILL
        for version in versions(repo):
            assert_complete(repo, version)
    assert interrupted >= 1  # at least one kill landed before the publish finished
    result = invoke(repo, CTR_ONNX, *LENIENT)
    assert result.exit_code == 0, result.output
    assert not staging_folders(repo)
    for version in versions(repo):
        assert_complete(repo, version)
