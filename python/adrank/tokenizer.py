"""Text inputs: how a request's text travels through the core and becomes the model's token ids.

The core batches fixed-size rows only, so a text input rides as one row of `max_bytes` UTF-8 bytes,
zero-padded (`text_row`); a longer text is cut at a character boundary (bytes far beyond anything the
tokenizer keeps). The backend turns the batch's rows back into texts and tokenizes them in one call
(`QueryTokenizer.encode`) with the Hugging Face `tokenizer.json` shipped in the version directory:
once per request — the text is context, never repeated per candidate — truncated to `max_length`
tokens and padded only to the batch's longest text, so a short query costs a short encoder run.

Thread-safety: every function and `encode` may be called from any thread (the Rust tokenizer holds no
Python state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from adrank.repository.config import TokenizerConfig


def text_row(text: str, max_bytes: int) -> np.ndarray:
    """uint8 [1, max_bytes]: the text's UTF-8 bytes, cut at a character boundary, zero-padded."""
    data = text.encode("utf-8")[:max_bytes]
    if len(data) == max_bytes:
        data = data.decode("utf-8", errors="ignore").encode("utf-8")  # drop a split trailing character
    row = np.zeros((1, max_bytes), dtype=np.uint8)
    row[0, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return row


def row_text(row: np.ndarray) -> str:
    """The text of one row made by `text_row`."""
    return bytes(row).rstrip(b"\0").decode("utf-8", errors="replace")


class QueryTokenizer:
    def __init__(self, version_dir: Path, config: TokenizerConfig) -> None:
        path = version_dir / config.file
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} is missing")
        self.config = config
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=config.max_length)
        self._tokenizer.enable_padding(pad_id=0)  # to the longest text of each call

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """{input_ids, attention_mask} int64 [len(texts), longest], named as the config says."""
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {self.config.input_ids: ids, self.config.attention_mask: mask}

    def encode_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The same for a batch's text rows (uint8 [R, max_bytes])."""
        return self.encode([row_text(row) for row in rows])
