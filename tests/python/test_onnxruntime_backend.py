"""The ONNX Runtime backend: it refuses a graph that disagrees with its config, and both of its run paths
(plain runs over the pooled views; an IOBinding over the same buffers) give the scores of ONNX Runtime
run directly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import adrank
from adrank.backends import BackendError
from adrank.repository.config import load_model_config
from adrank.servable import Servable
from served import MODELS, copy_model


def copy_ctr(tmp_path, **overrides):
    return copy_model(tmp_path, "ctr", **overrides)


@pytest.mark.parametrize("io_binding", [False, True])
def test_both_run_paths_equal_onnxruntime_run_directly(tmp_path, pool, io_binding):
    config, version_dir = copy_ctr(tmp_path, onnxruntime__io_binding=io_binding, instances=2)
    servable = Servable.load(pool, config, version_dir, 1)
    servable.warm_up()
    direct = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    pending = []
    for n in (1, 13, 300, 2048):
        dense = rng.integers(0, 500, size=(n, 13)).astype(np.float32)
        sparse = rng.integers(-(2**62), 2**62, size=(n, 26), dtype=np.int64)
        pending.append((dense, sparse, servable.model.submit({"dense": dense, "sparse": sparse})))
    for dense, sparse, request in pending:
        expected = direct.run(["ctr"], {"dense": dense, "sparse": sparse})[0]
        assert np.max(np.abs(request.wait(timeout_s=60).outputs["ctr"] - expected)) <= 1e-6
    servable.unload(pool)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"inputs": [{"name": "dense", "dtype": "float32", "shape": [13]}]}, "graph input 'sparse' is not an input"),
        (
            {
                "inputs": [
                    {"name": "dense", "dtype": "float32", "shape": [13]},
                    {"name": "sparse", "dtype": "int64", "shape": [26]},
                    {"name": "bid", "dtype": "float32"},
                ]
            },
            "config inputs ['bid'] are not inputs of the graph",
        ),
        (
            {
                "inputs": [
                    {"name": "dense", "dtype": "float32", "shape": [12]},
                    {"name": "sparse", "dtype": "int64", "shape": [26]},
                ]
            },
            "graph input 'dense'",
        ),
        (
            {
                "inputs": [
                    {"name": "dense", "dtype": "float64", "shape": [13]},
                    {"name": "sparse", "dtype": "int64", "shape": [26]},
                ]
            },
            "graph input 'dense' has type float32, the config says float64",
        ),
        ({"outputs": [{"name": "score", "dtype": "float32"}]}, "output 'score'"),
        ({"onnxruntime": {"execution_providers": ["NoSuchExecutionProvider"]}}, "NoSuchExecutionProvider"),
    ],
)
def test_a_graph_that_disagrees_with_its_config_is_refused_naming_the_tensor(tmp_path, pool, overrides, message):
    config, version_dir = copy_ctr(tmp_path, **overrides)
    with pytest.raises(BackendError) as error:
        Servable.load(pool, config, version_dir, 1)
    assert message in str(error.value)


def test_a_corrupt_model_file_is_refused_naming_it(tmp_path, pool):
    config, version_dir = copy_ctr(tmp_path)
    (version_dir / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(BackendError) as error:
        Servable.load(pool, config, version_dir, 1)
    assert "model.onnx: ONNX Runtime cannot load it" in str(error.value)


def test_a_text_model_batches_its_text_as_bytes_once_per_request(pool):
    config = load_model_config(MODELS / "relevance" / "config.yaml")
    inputs = [(spec.name, spec.dtype) for spec in config.core_signature().inputs]
    assert inputs == [("query", "uint8"), ("ad_embedding", "float32")]
    assert config.batcher_options().context_layout == adrank.ContextLayout.PER_REQUEST


@pytest.mark.parametrize(
    ("text", "max_bytes"),
    [("running shoes", 64), ("", 16), ("café crème brûlée", 16), ("日本語のクエリ" * 10, 32)],
)
def test_text_rows_keep_whole_characters_and_round_trip(text, max_bytes):
    from adrank.tokenizer import row_text, text_row

    row = text_row(text, max_bytes)
    assert row.shape == (1, max_bytes) and row.dtype == np.uint8
    back = row_text(row[0])
    assert text.startswith(back) and len(back.encode()) <= max_bytes
    assert back == text or len(text.encode()) > max_bytes
