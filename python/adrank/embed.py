"""TextEmbedder: ad texts -> L2-normalised embeddings, with the same encoder a text model serves.

The relevance model's graph runs its text encoder on the request's query and also outputs that
embedding (`query_embedding`). Fed ad texts in place of queries, the same graph gives the ad embeddings
its candidates must carry, so ads and queries are always embedded by the very same (int8) encoder.

Thread-safety: one TextEmbedder per thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrank.backends import BackendError, create_backend
from adrank.backends.base import ROW_REQUEST_INDEX
from adrank.repository.config import ModelConfig
from adrank.tokenizer import QueryTokenizer


class TextEmbedder:
    def __init__(self, version_dir: Path, config: ModelConfig, output: str = "query_embedding") -> None:
        text_inputs = [t for t in config.inputs if t.tokenizer is not None]
        if len(text_inputs) != 1:
            raise BackendError(f"model '{config.name}' has {len(text_inputs)} text inputs; embedding needs one")
        self._text = text_inputs[0]
        assert self._text.tokenizer is not None, "config validation gives every string input a tokenizer"
        self._config = config
        self._output = output
        self._tokenizer = QueryTokenizer(version_dir, self._text.tokenizer)
        self._session = create_backend(config.backend).load(version_dir, config, instance=0)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 [len(texts), dim], one row per text."""
        parts = [self._embed_batch(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        feeds = self._tokenizer.encode(texts)
        # The graph's candidate inputs are required but irrelevant here: one dummy row each.
        for t in self._config.inputs:
            if t.role == "candidate":
                feeds[t.name] = np.zeros([1, *t.shape], dtype=t.dtype)
        feeds[ROW_REQUEST_INDEX] = np.zeros(1, np.int64)
        outputs = self._session.run_arrays(feeds)
        if self._output not in outputs:
            raise BackendError(f"model '{self._config.name}' has no output '{self._output}' ({sorted(outputs)})")
        return np.asarray(outputs[self._output], dtype=np.float32)
