"""QueryTokenizer: turns a request's text input into the model's integer inputs.

Text never reaches the core: the front end tokenizes it once per request (one query, not one per
candidate) with the Hugging Face `tokenizer.json` shipped in the model's version directory, and hands
the core fixed-width id and mask rows (`max_length` wide, zero-padded). The backend may trim the
all-padding columns of a batch before running the model.

Thread-safety: `encode` may be called from any thread (the Rust tokenizer holds no Python state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from adrank.config import TokenizerConfig


class QueryTokenizer:
    def __init__(self, version_dir: Path, config: TokenizerConfig) -> None:
        path = version_dir / config.file
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} is missing")
        self.config = config
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=config.max_length)
        self._tokenizer.enable_padding(length=config.max_length, pad_id=0)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{input_ids, attention_mask} int64 [len(texts), max_length], named as the config says."""
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {self.config.input_ids: ids, self.config.attention_mask: mask}
