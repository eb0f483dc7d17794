"""What the served bundled models must equal, whatever protocol asks them: ONNX Runtime run directly on the
same inputs, the golden outputs recorded at training, and the real Criteo rows beside the checkout."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from examples.criteo import CriteoRows, read_rows
from served import CRITEO, MODELS


def latest_version(model: str) -> int:
    return max(int(p.name) for p in (MODELS / model).iterdir() if p.name.isdigit())


def version_dir(model: str) -> Path:
    return MODELS / model / str(latest_version(model))


def criteo_rows() -> CriteoRows:
    path = CRITEO / "train_1999.csv"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the Criteo rows live in ../shared/data/criteo beside the checkout")
    return read_rows(path)


def ctr_direct() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(version_dir("ctr") / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda dense, sparse: session.run(["ctr"], {"dense": dense, "sparse": sparse})[0]


def relevance_meta() -> dict:
    return json.loads((version_dir("relevance") / "meta.json").read_text())


def relevance_direct() -> Callable[[str, np.ndarray], np.ndarray]:
    """The relevance graph run directly on one query (its own token length) and its candidates."""
    folder = version_dir("relevance")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=32)

    def run(query: str, ads: np.ndarray) -> np.ndarray:
        encoding = tokenizer.encode(query)
        feeds = {
            "query_input_ids": np.array([encoding.ids], np.int64),
            "query_attention_mask": np.array([encoding.attention_mask], np.int64),
            "ad_embedding": ads,
            "row_request_index": np.zeros(len(ads), np.int64),
        }
        return session.run(["relevance"], feeds)[0]

    return run
