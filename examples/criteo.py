"""Criteo rows as the `ctr` model's inputs: `dense` float32 [N, 13] and `sparse` int64 [N, 26].

The Criteo Display Advertising files (in `../shared/data/criteo/`, never copied into this repository)
hold per impression a click label, 13 integer features I1..I13 and 26 categorical features C1..C26
(32-bit hashes written as 8 hex digits). Missing values become 0, integers are kept raw (the model's
graph applies its own log transform), and hashes are parsed from hex: exactly what an ads server would
send. Both files' headers are understood (`Id,Label,...` and `label,...`, integers written as floats).

It lives beside the example rather than in the adrank package because the server never reads these files:
`rank_example.py` imports it as `criteo` (its own directory), the tests and the benchmarks as `examples.criteo`
(the checkout's root is on their path).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DENSE_FIELDS = [f"I{i}" for i in range(1, 14)]
SPARSE_FIELDS = [f"C{i}" for i in range(1, 27)]


@dataclass(frozen=True)
class CriteoRows:
    dense: np.ndarray  # float32 [N, 13]
    sparse: np.ndarray  # int64 [N, 26]
    labels: np.ndarray  # int64 [N], 1 = clicked

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray | slice) -> CriteoRows:
        return CriteoRows(self.dense[index], self.sparse[index], self.labels[index])


def read_rows(path: Path) -> CriteoRows:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError(f"{path}: no rows")
    label_field = "Label" if "Label" in rows[0] else "label"
    dense = np.array([[float(r[f] or 0) for f in DENSE_FIELDS] for r in rows], dtype=np.float32)
    sparse = np.array([[int(r[f] or "0", 16) for f in SPARSE_FIELDS] for r in rows], dtype=np.int64)
    labels = np.array([int(float(r[label_field])) for r in rows], dtype=np.int64)
    return CriteoRows(dense, sparse, labels)
