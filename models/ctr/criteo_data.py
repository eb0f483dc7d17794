"""The Criteo rows as ``train.py`` trains the bundled ``ctr`` model on them: both CSVs parsed into one schema
(label; dense ``I1..I13`` as float32 raw integers, missing = 0; sparse ``C1..C26`` as int64 parsed from their
8-hex-digit strings, missing = 0), identical rows dropped, and what was read described for meta.json. The rows
are read from ``../shared/data/criteo`` and never copied into the repository."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

DATA_FILES: tuple[tuple[str, str], ...] = (("train_1999.csv", "Label"), ("sample_200.csv", "label"))
N_DENSE = 13
N_SPARSE = 26
DENSE_COLS = [f"I{i}" for i in range(1, N_DENSE + 1)]
SPARSE_COLS = [f"C{i}" for i in range(1, N_SPARSE + 1)]
INT64_MAX = 2**63 - 1

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int64]


@dataclasses.dataclass
class Dataset:
    label: IntArray  # [N] 0/1
    dense: FloatArray  # [N, 13]
    sparse: IntArray  # [N, 26]

    def take(self, idx: NDArray[np.intp]) -> Dataset:
        return Dataset(self.label[idx], self.dense[idx], self.sparse[idx])

    def __len__(self) -> int:
        return int(self.label.shape[0])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_dense(text: str) -> float:
    return float(text) if text.strip() else 0.0


def parse_sparse(text: str) -> int:
    text = text.strip()
    if not text:
        return 0
    value = int(text, 16)
    if not 0 <= value <= INT64_MAX:
        raise ValueError(f"categorical value {text!r} does not fit in int64")
    return value


def load_rows(path: Path, label_col: str) -> list[tuple[int, tuple[float, ...], tuple[int, ...]]]:
    rows: list[tuple[int, tuple[float, ...], tuple[int, ...]]] = []
    with path.open(newline="") as f:
        for record in csv.DictReader(f):
            label = int(float(record[label_col]))
            if label not in (0, 1):
                raise ValueError(f"{path.name}: label {label} is not 0/1")
            dense = tuple(float(np.float32(parse_dense(record[c]))) for c in DENSE_COLS)
            sparse = tuple(parse_sparse(record[c]) for c in SPARSE_COLS)
            rows.append((label, dense, sparse))
    return rows


def load_data(data_dir: Path) -> tuple[Dataset, dict[str, Any]]:
    """Load both CSVs, drop identical rows (keeping first occurrences), and describe what was read."""
    files: list[dict[str, Any]] = []
    all_rows: list[tuple[int, tuple[float, ...], tuple[int, ...]]] = []
    for name, label_col in DATA_FILES:
        path = data_dir / name
        rows = load_rows(path, label_col)
        files.append({"name": name, "sha256": sha256_file(path), "rows": len(rows)})
        all_rows.extend(rows)
    unique = list(dict.fromkeys(all_rows))
    labels_by_features: dict[tuple[tuple[float, ...], tuple[int, ...]], set[int]] = {}
    for label, dense, sparse in unique:
        labels_by_features.setdefault((dense, sparse), set()).add(label)
    conflicts = sum(1 for labels in labels_by_features.values() if len(labels) > 1)
    data = Dataset(
        label=np.array([r[0] for r in unique], dtype=np.int64),
        dense=np.array([r[1] for r in unique], dtype=np.float32),
        sparse=np.array([r[2] for r in unique], dtype=np.int64),
    )
    info = {
        "files": files,
        "rows_read": len(all_rows),
        "duplicate_rows_dropped": len(all_rows) - len(unique),
        "rows_after_dedup": len(unique),
        "feature_vectors_with_conflicting_labels": conflicts,
        "positives_after_dedup": int(data.label.sum()),
        "parsing": {
            "dense": "I1..I13 as float32 raw integers, missing = 0",
            "sparse": "C1..C26 as int64 parsed from 8-hex-digit strings (int(x, 16)), missing = 0",
        },
    }
    return data, info


def signed_log1p(x: FloatArray) -> FloatArray:
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)
