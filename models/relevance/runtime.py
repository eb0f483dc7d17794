"""The relevance graph run with ONNX Runtime's CPU provider, as the server opens it (config.yaml: 1 intra-op and 1
inter-op thread), for ``export.py``'s checks, ``stability.py`` and ``bench.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from head import AD, HIDDEN, IDS, MASK, QUERY_EMBEDDING, RELEVANCE, ROW_INDEX

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(path: Path, level: str = "all") -> ort.InferenceSession:
    """A CPU session at one of LEVELS (the server's config.yaml uses "all")."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_model(sess: ort.InferenceSession, ids: I64, mask: I64, ads: F32, rows: I64) -> tuple[F32, F32]:
    relevance, embedding = sess.run([RELEVANCE, QUERY_EMBEDDING], {IDS: ids, MASK: mask, AD: ads, ROW_INDEX: rows})
    return np.asarray(relevance, dtype=np.float32), np.asarray(embedding, dtype=np.float32)


def ort_embed(sess: ort.InferenceSession, ids: I64, mask: I64) -> F32:
    """Embeds texts as `adrank embed` does: as queries, with a dummy one-row candidate."""
    dummy = np.zeros((1, HIDDEN), dtype=np.float32)
    return run_model(sess, ids, mask, dummy, np.zeros(1, dtype=np.int64))[1]


def encoder_embed(sess: ort.InferenceSession, ids: I64, mask: I64) -> F32:
    """The bare encoder's output (the fp32 export, before the head is attached)."""
    return np.asarray(sess.run(None, {IDS: ids, MASK: mask})[0], dtype=np.float32)
