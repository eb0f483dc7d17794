"""The bundled ``relevance`` model's query tokenizer as ``export.py`` ships and checks it: the package's
tokenizer.json with truncation and padding fixed at MAX_LENGTH, verified to give exactly the ids and masks
of the transformers tokenizers and of the server's own configuration (python/adrank/tokenizer.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

MAX_LENGTH = 32

I64 = npt.NDArray[np.int64]


def serving_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer exactly as the server configures it (python/adrank/tokenizer.py)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    tokenizer.enable_padding(length=MAX_LENGTH, pad_id=0)
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[I64, I64]:
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def write_tokenizer(source_dir: Path, destination: Path) -> None:
    """Ships the package's tokenizer.json with truncation and padding fixed at MAX_LENGTH (it ships 128).

    The server configures both in code anyway; baking them in keeps a plain `Tokenizer.from_file` consistent.
    """
    tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    tokenizer.enable_padding(length=MAX_LENGTH, pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(destination))


def verify_tokenizer(shipped: Path, source_dir: Path, texts: Sequence[str]) -> dict[str, Any]:
    """The server's path must give exactly the ids and masks of the transformers tokenizers of the package."""
    from transformers import AutoTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ids, mask = tokenize(serving_tokenizer(shipped), texts)
    plain_ids, plain_mask = tokenize(Tokenizer.from_file(str(shipped)), texts)
    references = {
        "transformers.AutoTokenizer": AutoTokenizer.from_pretrained(str(source_dir)),
        "transformers.BertTokenizerLegacy (vocab.txt, pure Python)": BertTokenizerLegacy(
            vocab_file=str(source_dir / "vocab.txt"), do_lower_case=True
        ),
    }
    for name, reference in references.items():
        encoded = reference(list(texts), padding="max_length", truncation=True, max_length=MAX_LENGTH)
        ref_ids = np.array(encoded["input_ids"], dtype=np.int64)
        ref_mask = np.array(encoded["attention_mask"], dtype=np.int64)
        if not (np.array_equal(ids, ref_ids) and np.array_equal(mask, ref_mask)):
            bad = [t for t, a, b in zip(texts, ids, ref_ids, strict=True) if not np.array_equal(a, b)]
            raise SystemExit(f"tokenizer mismatch against {name} for {bad[:3]}")
    if not (np.array_equal(ids, plain_ids) and np.array_equal(mask, plain_mask)):
        raise SystemExit("tokenizer.json's own truncation/padding settings differ from the server's")
    lengths = mask.sum(axis=1)
    return {
        "texts": len(texts),
        "identical_to": [*references, "tokenizer.json without configuring truncation/padding"],
        "truncated_texts": int((lengths == MAX_LENGTH).sum()),
        "max_tokens": int(lengths.max()),
    }
