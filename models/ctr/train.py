"""Train the bundled ``ctr`` model (a DCN-v2) on the Criteo rows and publish it as an ONNX version folder.

What it does, in order:

1. Reads ``train_1999.csv`` and ``sample_200.csv`` from ``--data-dir`` (default ``<repo>/../shared/data/criteo``;
   the rows are licensed data and are never copied into the repository), parses them into one schema
   (label; dense ``I1..I13`` as float32 raw integers, missing = 0; sparse ``C1..C26`` as int64 parsed from their
   8-hex-digit strings, missing = 0) and drops identical rows.
2. Holds out a stratified 20 % test split (fixed seed), then carves a stratified validation slice out of the
   training portion for early stopping. The test split is used only for the final report.
3. Fits a hashed logistic-regression baseline (scikit-learn; one-hot of hashed categorical buckets plus
   log-transformed dense features, C picked by cross-validation on the training portion).
4. Trains a DCN-v2 in PyTorch (single thread, deterministic algorithms, fixed seeds). All preprocessing lives
   inside the model: ``sign(x) * log1p(|x|)`` then standardisation for the dense features, and a non-negative
   modulo of each int64 sparse value by its field's bucket count to index that field's embedding table, so any
   float32 dense and any int64 sparse input (negative or huge ones included) is valid.
5. Exports it with ``torch.onnx.export(dynamo=True, opset_version=18)``: inputs ``dense`` float32 [N, 13] and
   ``sparse`` int64 [N, 26], output ``ctr`` float32 [N] (a probability), N dynamic. Checks the file with
   ``onnx.checker`` and ONNX Runtime (CPU) against PyTorch on the test split and at N = 1, 7 and 2000, and checks
   that int64 extremes give finite probabilities.
6. Writes ``model.onnx`` and ``meta.json`` (sha256, training data and metrics, synthetic golden inputs and their
   ONNX Runtime outputs) into a temporary folder beside the target and renames it to ``models/ctr/<version>/``;
   an existing version is never overwritten.

Run from the repository root with the training environment (the package's `train` extra, not the server's
.venv)::

    make train-env
    .venv-train/bin/python models/ctr/train.py --version 2

(torch==2.13.0 resolves to the CPU wheel there.) Same seed, same data, same library versions: the same bytes.
Takes about ten seconds on one core.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

# The rows as this script trains on them (its own folder is on sys.path when it runs).
from criteo_data import (
    INT64_MAX,
    N_DENSE,
    N_SPARSE,
    Dataset,
    FloatArray,
    IntArray,
    load_data,
    sha256_file,
    signed_log1p,
)
from scipy import sparse as sp
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from torch import nn

MODEL_NAME = "ctr"
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "criteo"
OPSET = 18
ATOL = 1e-6
ATOL_REASON = (
    "fp32 throughout (no integer ops). fp32 kernels may differ by a few ulps between CPU kinds (AVX2 vs AVX-512 "
    "sgemm and exp): measured on an AMD EPYC (avx2, no avx512/vnni), ONNX Runtime reproduces these outputs, recorded "
    "at training, bit for bit (0.0) and differs from onnx's reference evaluator by 6e-8; 1e-6 (about 16 "
    "ulps at 0.5) absorbs such differences, while a retrained or altered model moves scores by orders of magnitude more"
)
INT64_MIN = -(2**63)
LR_HASH_BUCKETS = 1 << 20


@dataclasses.dataclass(frozen=True)
class HParams:
    """Everything that determines the trained weights, recorded in meta.json."""

    seed: int = 20240601
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    embedding_dim: int = 8
    bucket_factor: int = 1  # buckets per field = bucket_factor * (distinct values in the training portion) ...
    min_buckets: int = 8  # ... clamped to [min_buckets, max_buckets]
    max_buckets: int = 512
    cross_layers: int = 2
    cross_rank: int = 16  # low-rank cross layers: W = U V^T with U, V of shape [D, cross_rank]
    mlp_hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.3
    embedding_dropout: float = 0.1
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    embedding_l2: float = 1e-4  # L2 on the embedding rows a batch uses, on top of AdamW's decay
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 20
    golden_rows: int = 16


# ----------------------------------------------------------------------------------------------------------------------
# Logistic-regression baseline


def logistic_regression_baseline(
    train: Dataset, test: Dataset, buckets: list[int], hp: HParams
) -> tuple[FloatArray, dict[str, Any]]:
    """Hashed LR: one-hot of (field, value mod buckets) plus standardised signed-log dense; C by 5-fold CV."""

    def features(d: Dataset) -> tuple[FloatArray, IntArray]:
        hashed = np.stack([np.remainder(d.sparse[:, j], buckets[j]) for j in range(N_SPARSE)], axis=1)
        return signed_log1p(d.dense), hashed

    dense_tr, cat_tr = features(train)
    dense_te, cat_te = features(test)
    scaler = StandardScaler().fit(dense_tr)
    onehot = OneHotEncoder(handle_unknown="ignore", dtype=np.float32).fit(cat_tr)
    x_tr = sp.hstack([sp.csr_matrix(scaler.transform(dense_tr)), onehot.transform(cat_tr)]).tocsr()
    x_te = sp.hstack([sp.csr_matrix(scaler.transform(dense_te)), onehot.transform(cat_te)]).tocsr()
    cs = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    lr = LogisticRegressionCV(
        Cs=cs,
        cv=StratifiedKFold(5, shuffle=True, random_state=hp.seed),
        scoring="roc_auc",
        solver="liblinear",
        max_iter=5000,
        random_state=hp.seed,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    ).fit(x_tr, train.label)
    prob = lr.predict_proba(x_te)[:, 1].astype(np.float32)
    return prob, {
        "features": "standardised sign(x)*log1p(|x|) dense + one-hot of value mod per-field buckets",
        "C_grid": cs,
        "C_chosen": float(np.ravel(lr.C_)[0]),
        "cv_folds": 5,
        "solver": "liblinear",
        "n_features": int(x_tr.shape[1]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# DCN-v2


class CrossLayer(nn.Module):
    """x_{l+1} = x0 * (U (V^T x_l) + b) + x_l, the low-rank cross layer of DCN-v2 (Wang et al., 2021)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.v = nn.Linear(dim, rank, bias=False)
        self.u = nn.Linear(rank, dim, bias=True)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.u(self.v(x)) + x


class DCNv2(nn.Module):
    """DCN-v2 (parallel cross network and MLP) with its preprocessing built in.

    Inputs: ``dense`` float32 [N, 13], any values; ``sparse`` int64 [N, 26], any values. Output: ``ctr`` [N].
    Field j's value v maps to row ``offsets[j] + (v mod buckets[j])`` (a non-negative modulo) of one packed
    parameter that holds the 26 per-field tables side by side, so each field has its own table.
    """

    buckets: torch.Tensor
    offsets: torch.Tensor
    dense_mean: torch.Tensor
    dense_inv_std: torch.Tensor

    def __init__(self, buckets: list[int], dense_mean: FloatArray, dense_std: FloatArray, hp: HParams) -> None:
        super().__init__()
        self.register_buffer("buckets", torch.tensor(buckets, dtype=torch.int64))
        self.register_buffer("offsets", torch.tensor(np.cumsum([0, *buckets[:-1]]), dtype=torch.int64))
        self.register_buffer("dense_mean", torch.from_numpy(dense_mean.astype(np.float32)))
        self.register_buffer("dense_inv_std", torch.from_numpy((1.0 / dense_std).astype(np.float32)))
        self.embedding = nn.Embedding(int(sum(buckets)), hp.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.embedding_dropout = nn.Dropout(hp.embedding_dropout)
        dim = N_DENSE + N_SPARSE * hp.embedding_dim
        self.cross = nn.ModuleList([CrossLayer(dim, hp.cross_rank) for _ in range(hp.cross_layers)])
        layers: list[nn.Module] = []
        width = dim
        for hidden in hp.mlp_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(hp.dropout)]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(dim + width, 1)
        self.head_dropout = nn.Dropout(hp.dropout)

    def rows(self, sparse: torch.Tensor) -> torch.Tensor:
        # torch.remainder follows the divisor's sign, so the result is in [0, buckets) for every int64, and it
        # exports to ONNX Mod(fmod=0), which has the same semantics (checked after export).
        return torch.remainder(sparse, self.buckets) + self.offsets

    def logit(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        d = torch.sign(dense) * torch.log1p(torch.abs(dense))
        d = (d - self.dense_mean) * self.dense_inv_std
        e = self.embedding_dropout(self.embedding(self.rows(sparse))).flatten(1)
        x0 = torch.cat([d, e], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        h = self.mlp(x0)
        return self.head(self.head_dropout(torch.cat([x, h], dim=1))).squeeze(1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(dense, sparse))


def bucket_counts(train: Dataset, hp: HParams) -> list[int]:
    counts = []
    for j in range(N_SPARSE):
        distinct = len(np.unique(train.sparse[:, j]))
        counts.append(int(min(hp.max_buckets, max(hp.min_buckets, hp.bucket_factor * distinct))))
    return counts


def predict(model: DCNv2, d: Dataset) -> FloatArray:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(d.dense), torch.from_numpy(d.sparse))
    return out.numpy().astype(np.float32)


def metrics(label: IntArray, prob: FloatArray) -> dict[str, float]:
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return {"auc": round(float(roc_auc_score(label, p)), 6), "logloss": round(float(log_loss(label, p)), 6)}


def train_dcn(fit: Dataset, val: Dataset, buckets: list[int], hp: HParams) -> tuple[DCNv2, dict[str, Any]]:
    """Mini-batch AdamW on `fit`; keep the weights with the best validation AUC (ties: lower logloss)."""
    torch.manual_seed(hp.seed)
    dense_log = signed_log1p(fit.dense)
    mean = dense_log.mean(axis=0)
    std = np.maximum(dense_log.std(axis=0), 1e-3)
    model = DCNv2(buckets, mean, std, hp)
    prior = float(fit.label.mean())
    with torch.no_grad():
        model.head.bias.fill_(math.log(prior / (1 - prior)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    dense_t, sparse_t = torch.from_numpy(fit.dense), torch.from_numpy(fit.sparse)
    label_t = torch.from_numpy(fit.label.astype(np.float32))
    generator = torch.Generator().manual_seed(hp.seed)
    best: tuple[float, float] = (-1.0, 0.0)
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    best_epoch, stale, epoch = 0, 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, hp.max_epochs + 1):
        model.train()
        order = torch.randperm(len(fit), generator=generator)
        total = 0.0
        for start in range(0, len(fit), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            logits = model.logit(dense_t[idx], sparse_t[idx])
            loss = loss_fn(logits, label_t[idx])
            if hp.embedding_l2 > 0:
                used = model.embedding(model.rows(sparse_t[idx]))
                loss = loss + hp.embedding_l2 * used.pow(2).sum(dim=(1, 2)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        m = metrics(val.label, predict(model, val))
        history.append({"epoch": epoch, "train_loss": round(total / len(fit), 6), **m})
        if (m["auc"], -m["logloss"]) > best:
            best, best_epoch, stale = (m["auc"], -m["logloss"]), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= hp.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "epochs_run": epoch,
        "best_epoch": best_epoch,
        "validation_at_best_epoch": {"auc": best[0], "logloss": -best[1]},
        "stopping": f"best validation AUC (ties: logloss), patience {hp.patience}, weights of the best epoch kept",
    }
    return model, info


# ----------------------------------------------------------------------------------------------------------------------
# Export and verification


def export_onnx(model: DCNv2, example: Dataset, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.onnx.export(
        model,
        (torch.from_numpy(example.dense), torch.from_numpy(example.sparse)),
        dynamo=True,
        opset_version=OPSET,
        input_names=["dense", "sparse"],
        output_names=["ctr"],
        dynamic_shapes={"dense": {0: batch}, "sparse": {0: batch}},
        external_data=False,
    )
    assert program is not None
    program.save(str(path), external_data=False)
    # The exporter annotates every node with its Python stack trace (absolute paths, line numbers): drop those
    # annotations so that the file is the same wherever and from whichever revision of this script it is built.
    proto = onnx.load(str(path))
    graph = proto.graph
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        del item.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""
    del graph.metadata_props[:]
    graph.doc_string = ""
    onnx.save_model(proto, str(path))


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, dense: FloatArray, sparse: IntArray) -> FloatArray:
    (out,) = session.run(["ctr"], {"dense": dense, "sparse": sparse})
    return np.asarray(out)


def check_signature(model_proto: onnx.ModelProto) -> None:
    def sig(values: Any) -> list[tuple[str, int, list[str | int]]]:
        result = []
        for v in values:
            t = v.type.tensor_type
            dims: list[str | int] = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            result.append((v.name, t.elem_type, dims))
        return result

    inputs, outputs = sig(model_proto.graph.input), sig(model_proto.graph.output)
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    ok_inputs = (
        len(inputs) == 2
        and inputs[0][:2] == ("dense", f32)
        and inputs[1][:2] == ("sparse", i64)
        and inputs[0][2][1:] == [N_DENSE]
        and inputs[1][2][1:] == [N_SPARSE]
        and all(isinstance(v[2][0], str) for v in inputs)
    )
    ok_outputs = len(outputs) == 1 and outputs[0][:2] == ("ctr", f32) and len(outputs[0][2]) == 1
    if not (ok_inputs and ok_outputs):
        raise RuntimeError(f"unexpected ONNX signature: inputs {inputs}, outputs {outputs}")
    mods = [n for n in model_proto.graph.node if n.op_type == "Mod"]
    for node in mods:
        fmod = [a.i for a in node.attribute if a.name == "fmod"]
        if fmod and fmod[0] != 0:
            raise RuntimeError("sparse modulo exported as fmod=1 (C-style remainder): negative inputs would break")


def tile_rows(d: Dataset, n: int, rng: np.random.Generator) -> Dataset:
    return d.take(rng.integers(0, len(d), size=n))


def verify(model: DCNv2, path: Path, test: Dataset, train: Dataset, hp: HParams) -> dict[str, Any]:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    check_signature(proto)
    session = ort_session(path)
    rng = np.random.default_rng(hp.seed + 7)
    cases: dict[str, Dataset] = {"test_split": test}
    for n in (1, 7, 2000):
        cases[f"n={n}"] = tile_rows(train, n, rng)
    diffs: dict[str, float] = {}
    for name, d in cases.items():
        got = run_ort(session, d.dense, d.sparse)
        want = predict(model, d)
        if got.shape != (len(d),) or got.dtype != np.float32:
            raise RuntimeError(f"{name}: ONNX output {got.shape} {got.dtype}, want ({len(d)},) float32")
        diffs[name] = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if diffs[name] > ATOL:
            raise RuntimeError(f"{name}: max |onnx - torch| = {diffs[name]:.3g} > {ATOL}")
    # Sparse values that only a correct non-negative modulo handles: int64 extremes, negatives, huge values.
    extremes = np.array([INT64_MIN, INT64_MAX, -1, INT64_MIN + 1, -(2**40) - 3, 2**62 + 12345, 0, 1], np.int64)
    sparse = np.resize(extremes, (len(extremes), N_SPARSE)).astype(np.int64)
    for k in range(len(extremes)):
        sparse[k] = np.roll(extremes, k)[np.arange(N_SPARSE) % len(extremes)]
    dense = np.zeros((len(extremes), N_DENSE), np.float32)
    got = run_ort(session, dense, sparse)
    want = predict(model, Dataset(np.zeros(len(extremes), np.int64), dense, sparse))
    if not (np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))):
        raise RuntimeError(f"int64 extremes give non-finite or out-of-range probabilities: {got}")
    diffs["int64_extremes"] = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    if diffs["int64_extremes"] > ATOL:
        raise RuntimeError(f"int64 extremes: max |onnx - torch| = {diffs['int64_extremes']:.3g}")
    rows = model.rows(torch.from_numpy(sparse)).numpy()
    expected_rows = np.array(
        [
            [int(v) % b + o for v, b, o in zip(row, model.buckets.tolist(), model.offsets.tolist(), strict=True)]
            for row in sparse.tolist()
        ],
        dtype=np.int64,
    )
    if not np.array_equal(rows, expected_rows):
        raise RuntimeError("torch.remainder disagrees with Python's non-negative modulo")
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    return {
        "parity": {
            "max_abs_diff_vs_torch": max(diffs.values()),
            "by_case": diffs,
            "atol": ATOL,
            "onnxruntime": ort.__version__,
            "execution_provider": "CPUExecutionProvider",
        },
        "onnx": {"opset": OPSET, "ir_version": int(proto.ir_version), "producer": producer},
    }


def golden_inputs(train: Dataset, hp: HParams) -> Dataset:
    """Synthetic rows: each feature drawn independently from its training marginal, plus edge rows."""
    rng = np.random.default_rng(hp.seed + 1)
    n_sampled = hp.golden_rows - 3
    dense = np.stack([rng.choice(train.dense[:, j], size=n_sampled) for j in range(N_DENSE)], axis=1)
    sparse = np.stack([rng.choice(train.sparse[:, j], size=n_sampled) for j in range(N_SPARSE)], axis=1)
    zeros_dense = np.zeros(N_DENSE, np.float32)
    zeros_sparse = np.zeros(N_SPARSE, np.int64)
    negative_dense = -np.array([1, 2, 0.5, 3, 1e6, 7, 1, 2, 10, 1, 1.5, 100, 4], np.float32)
    extreme_values = [INT64_MIN, INT64_MAX, -1, -(2**40) - 3, 2**62 + 12345]
    extreme_sparse = np.array([extreme_values[j % len(extreme_values)] for j in range(N_SPARSE)], dtype=np.int64)
    dense = np.vstack([dense, zeros_dense, negative_dense, dense[0]]).astype(np.float32)
    sparse = np.vstack([sparse, zeros_sparse, sparse[1], extreme_sparse]).astype(np.int64)
    return Dataset(np.zeros(len(dense), np.int64), dense, sparse)


# ----------------------------------------------------------------------------------------------------------------------
# Publishing


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", type=int, required=True, help="version folder to create (positive integer)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder holding the Criteo CSVs")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="model folder (default: this script's folder)")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be a positive integer")
    out_dir: Path = args.out_dir.resolve()
    target = out_dir / str(args.version)
    if target.exists():
        parser.error(f"{target} exists; versions are immutable, pick a new one")

    hp = HParams()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    np.random.seed(hp.seed)

    data, data_info = load_data(args.data_dir)
    all_idx = np.arange(len(data))
    train_idx, test_idx = train_test_split(
        all_idx, test_size=hp.test_fraction, stratify=data.label, random_state=hp.seed
    )
    train, test = data.take(np.sort(train_idx)), data.take(np.sort(test_idx))
    fit_idx, val_idx = train_test_split(
        np.arange(len(train)), test_size=hp.val_fraction, stratify=train.label, random_state=hp.seed + 1
    )
    fit, val = train.take(np.sort(fit_idx)), train.take(np.sort(val_idx))
    buckets = bucket_counts(fit, hp)
    print(
        f"rows {len(data)} (dropped {data_info['duplicate_rows_dropped']} duplicates): "
        f"fit {len(fit)}, validation {len(val)}, test {len(test)}",
        file=sys.stderr,
    )

    lr_prob, lr_info = logistic_regression_baseline(train, test, buckets, hp)
    model, train_info = train_dcn(fit, val, buckets, hp)
    dcn_prob = predict(model, test)
    test_metrics = {
        "dcn_v2": metrics(test.label, dcn_prob),
        "logistic_regression_baseline": metrics(test.label, lr_prob),
        "positives": int(test.label.sum()),
        "rows": len(test),
    }
    print(json.dumps(test_metrics), file=sys.stderr)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{args.version}-", dir=out_dir))
    try:
        os.chmod(tmp, 0o755)
        model_path = tmp / "model.onnx"
        export_onnx(model, tile_rows(train, 8, np.random.default_rng(hp.seed)), model_path)
        checks = verify(model, model_path, test, train, hp)
        golden = golden_inputs(fit, hp)
        golden_out = run_ort(ort_session(model_path), golden.dense, golden.sparse)
        if not np.all(np.isfinite(golden_out)):
            raise RuntimeError("golden outputs are not finite")
        n_params = sum(p.numel() for p in model.parameters())
        meta = {
            "model": MODEL_NAME,
            "version": args.version,
            "sha256": sha256_file(model_path),
            "created_by": "models/ctr/train.py",
            "training": {
                "data": data_info,
                "split": {
                    "seed": hp.seed,
                    "test_fraction": hp.test_fraction,
                    "stratified": True,
                    "train_rows": len(train),
                    "test_rows": len(test),
                    "validation_rows": len(val),
                    "validation": "stratified slice of the training portion, used only for early stopping",
                    "fit_rows": len(fit),
                },
                "hyperparameters": dataclasses.asdict(hp),
                "architecture": {
                    "type": "DCN-v2, parallel low-rank cross network and MLP",
                    "dense_transform": "sign(x)*log1p(|x|), standardised with training-portion mean/std",
                    "sparse_transform": "per-field embedding table, row = value mod buckets (non-negative modulo)",
                    "buckets_per_field": buckets,
                    "parameters": int(n_params),
                },
                "optimizer": "AdamW",
                "torch": torch.__version__,
                **train_info,
                "logistic_regression_baseline": lr_info,
            },
            "metrics": {"test": test_metrics},
            "golden": {
                "inputs": {"dense": golden.dense.tolist(), "sparse": [[int(v) for v in r] for r in golden.sparse]},
                "outputs": {"ctr": [float(v) for v in golden_out]},
                "atol": ATOL,
                "atol_reason": ATOL_REASON,
                "note": "synthetic rows: features sampled independently from training marginals, plus edge rows "
                "(all zeros, negative dense, extreme int64 sparse); outputs from ONNX Runtime CPU",
            },
            **checks,
        }
        write_file(tmp / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
        fsync_dir(tmp)
        if target.exists():
            raise FileExistsError(f"{target} appeared while training; not overwriting it")
        os.rename(tmp, target)
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"wrote {target} (sha256 {meta['sha256']}, parity {checks['parity']['max_abs_diff_vs_torch']:.3g})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
