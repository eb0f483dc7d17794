"""Request sets for the benchmarks: real inputs, heavy-tailed candidate counts, serialized before the clock starts.

An ads server sends one request per auction with tens to thousands of candidates. A request set here holds, per
request, its candidate count N (lognormal: median 100, p99 about 1000, capped at 2000, at least 1), the arrays a
model consumes (for the engine-only runs, which feed ONNX Runtime directly) and the request already serialized
to the bytes a server reads, so the load generator sends bytes and never serializes on the clock.

- ctr: N rows sampled (with replacement) from the real Criteo rows in `../shared/data/criteo/train_1999.csv`;
  or every request of one fixed N (`candidates=`), where a benchmark counts requests/s of one size (overload).
- Other mixes of N (`Mix`, for ctr and relevance): `ads`, auctions of 100-700 candidates drawn uniformly (the ads
  workload of issue 35, no heavy tail), and `fixed:N`, every request the same N (50, 200 and 800 tell the per-call
  cost apart from the heavy tail's).
- relevance: a query from `models/relevance/texts.json` ("queries") and N ad embeddings made once, with
  adrank's own `TextEmbedder`, from the ad titles there ("ads"). Or the query drawn Zipf-like (`QueryMix`,
  `zipf`): rank k of `distinct` queries (10,000 by default, built from the same texts: query + an ad title's first
  words + a modifier) with probability proportional to 1 / k^s (s = 1), as ads queries are: what the context-tower
  cache is measured on (issue 35).
- KServe v2 (`inference.GRPCInferenceService/ModelInfer`, what Triton, PyTriton and adrank speak): the same
  ctr arrays as `ModelInferRequest` bytes, serialized with adrank's own stubs of the protocol (adrank.kserve).

Everything is drawn from a fixed seed: the engine-only run (another process) rebuilds the identical set.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
CRITEO_FILE = REPO.parent / "shared" / "data" / "criteo" / "train_1999.csv"

MEDIAN_CANDIDATES = 100
P99_CANDIDATES = 1000
MAX_CANDIDATES = 2000
# A lognormal's p99 is median * exp(2.3263 sigma): sigma = ln(10) / 2.3263 = 0.99.
SIGMA = math.log(P99_CANDIDATES / MEDIAN_CANDIDATES) / 2.3263478740408408
# The ads workload's auctions (issue 35): 100-700 candidates, uniform.
ADS_CANDIDATES = (100, 700)
RANK_METHOD = "/adrank.v1.Ranking/Rank"
KSERVE_METHOD = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class RequestSet:
    """Pre-serialized requests of one model; `feeds[i]` are request i's model inputs (for ONNX Runtime)."""

    model: str
    method: str
    payloads: list[bytes]
    candidates: np.ndarray  # int64 [len(payloads)]
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    context: list[str] = field(default_factory=list, repr=False)  # relevance: each request's query

    def __len__(self) -> int:
        return len(self.payloads)

    def summary(self) -> dict[str, float]:
        """The set's sizes; with contexts, how many distinct ones it holds (a load cycles over the set's requests, so
        a context cache meets at most that many distinct queries however long the run)."""
        n = self.candidates
        sizes = np.array([len(p) for p in self.payloads])
        summary = {
            "requests": len(self),
            "candidates_p50": float(np.percentile(n, 50)),
            "candidates_p99": float(np.percentile(n, 99)),
            "candidates_mean": float(n.mean()),
            "candidates_max": int(n.max()),
            "bytes_mean": float(sizes.mean()),
        }
        if self.context:
            summary["distinct_contexts"] = len(set(self.context))
        return summary


@dataclass(frozen=True)
class Mix:
    """How many candidates each request of a set holds: `lognormal` (the default), `uniform` over [low, high], or
    `fixed` (low == high). Written and parsed as `lognormal`, `ads` (= uniform:100-700), `uniform:LOW-HIGH` or
    `fixed:N`, the form the benchmarks' `--mix` takes."""

    kind: str = "lognormal"
    low: int = 1
    high: int = MAX_CANDIDATES

    @classmethod
    def parse(cls, text: str) -> Mix:
        kind, _, spec = text.partition(":")
        try:
            if text == "lognormal":
                return cls()
            if text == "ads":
                return cls("uniform", ADS_CANDIDATES[0], ADS_CANDIDATES[1])
            if kind == "fixed":
                return cls.fixed(int(spec))
            if kind == "uniform":
                low, high = (int(part) for part in spec.split("-"))
                if 1 <= low <= high:
                    return cls("uniform", low, high)
        except ValueError:
            pass
        raise ValueError(
            f"candidate mix {text!r}: expected lognormal, ads, uniform:LOW-HIGH (1 <= LOW <= HIGH) or fixed:N (N >= 1)"
        )

    @classmethod
    def fixed(cls, candidates: int) -> Mix:
        if candidates < 1:
            raise ValueError(f"candidate mix fixed:{candidates}: N must be at least 1")
        return cls("fixed", candidates, candidates)

    @property
    def label(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.low}"
        return f"uniform:{self.low}-{self.high}" if self.kind == "uniform" else "lognormal"

    def counts(self, count: int, seed: int) -> np.ndarray:
        """N per request, int64 [count], drawn from `seed`."""
        if self.kind == "fixed":
            return np.full(count, self.low, dtype=np.int64)
        rng = np.random.default_rng(seed)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high, size=count, endpoint=True).astype(np.int64)
        draws = rng.lognormal(mean=math.log(MEDIAN_CANDIDATES), sigma=SIGMA, size=count)
        return np.clip(np.rint(draws), 1, MAX_CANDIDATES).astype(np.int64)


# Appended to the evaluation queries to make distinct ones: what users add to a query.
QUERY_MODIFIERS = ("", "near me", "cheap", "best", "online", "deals", "reviews", "for sale", "2026", "free shipping")


@dataclass(frozen=True)
class QueryMix:
    """Which query each relevance request carries: `distinct == 0` the evaluation queries, uniform (written
    `texts`); otherwise Zipf over `distinct` queries with exponent `s` (written `zipf`, `zipf:N` or `zipf:N:S`)."""

    distinct: int = 0
    s: float = 1.0

    @classmethod
    def parse(cls, text: str) -> QueryMix:
        kind, *spec = text.split(":")
        try:
            if text == "texts":
                return cls()
            if kind == "zipf" and len(spec) <= 2:
                distinct = int(spec[0]) if spec else 10_000
                s = float(spec[1]) if len(spec) == 2 else 1.0
                if distinct >= 1 and s > 0:
                    return cls(distinct, s)
        except ValueError:
            pass
        raise ValueError(f"query mix {text!r}: expected texts, zipf, zipf:DISTINCT or zipf:DISTINCT:S (S > 0)")

    @property
    def label(self) -> str:
        return "texts" if not self.distinct else f"zipf:{self.distinct}:{self.s:g}"

    def draw(self, count: int, seed: int, models: Path = MODELS) -> list[str]:
        """`count` queries (Zipf mixes only; the `texts` mix is drawn by relevance_requests as it always was)."""
        return zipf_stream(distinct_queries(self.distinct, models), self.s, count, seed)


# The default draws: the heavy-tailed candidate counts and the evaluation queries.
LOGNORMAL = Mix()
EVALUATION_QUERIES = QueryMix()


def distinct_queries(count: int, models: Path = MODELS) -> list[str]:
    """`count` distinct queries from the relevance texts: query + an ad title's first words + a modifier."""
    queries, ads = relevance_texts(models)
    heads = [" ".join(ad.lower().split()[:2]) for ad in ads]
    out: list[str] = []
    for modifier in QUERY_MODIFIERS:
        for head in ["", *heads]:
            for query in queries:
                out.append(" ".join(part for part in (query, head, modifier) if part))
                if len(out) == count:
                    return out
    raise ValueError(f"{count} distinct queries: the relevance texts make at most {len(out)}")


def zipf_stream(queries: Sequence[str], s: float, length: int, seed: int) -> list[str]:
    """`length` queries drawn with P(rank k) proportional to 1 / k^s (ranks over the queries in a shuffled order)."""
    rng = np.random.default_rng(seed)
    ranked = list(rng.permutation(len(queries)))
    weights = 1.0 / np.arange(1, len(queries) + 1) ** s
    picks = rng.choice(len(queries), size=length, p=weights / weights.sum())
    return [queries[ranked[i]] for i in picks]


def ctr_requests(count: int, seed: int = 1, criteo_file: Path = CRITEO_FILE, mix: Mix = Mix()) -> RequestSet:
    """`count` Rank requests for `ctr`: dense f32 [N, 13] and sparse i64 [N, 26] from real Criteo rows; N drawn
    from `mix`."""
    from adrank.client import build_request
    from examples.criteo import read_rows

    rows = read_rows(criteo_file)
    sizes = mix.counts(count, seed)
    rng = np.random.default_rng(seed + 1)
    payloads: list[bytes] = []
    feeds: list[dict[str, np.ndarray]] = []
    for i, n in enumerate(sizes):
        picked = rows.take(rng.integers(0, len(rows), size=int(n)))
        feed = {"dense": np.ascontiguousarray(picked.dense), "sparse": np.ascontiguousarray(picked.sparse)}
        payloads.append(build_request(["ctr"], feed, request_id=f"ctr-{i}").SerializeToString())
        feeds.append(feed)
    return RequestSet("ctr", RANK_METHOD, payloads, sizes, feeds)


def relevance_texts(models: Path = MODELS) -> tuple[list[str], list[str]]:
    """(queries, ad texts) from the relevance model's own evaluation texts."""
    texts = json.loads((models / "relevance" / "texts.json").read_text())
    return list(texts["queries"]), list(texts["ads"])


def ad_embeddings(ads: Sequence[str], models: Path = MODELS) -> np.ndarray:
    """float32 [len(ads), 384], embedded by the relevance model's own encoder (as `adrank embed` does)."""
    from adrank.embed import TextEmbedder
    from adrank.repository import ModelRepository

    entry = ModelRepository(models).entry("relevance")
    return TextEmbedder(entry.version_dir(entry.versions[-1]), entry.config).embed(list(ads))


def relevance_requests(
    count: int, seed: int = 2, models: Path = MODELS, mix: Mix = Mix(), queries: QueryMix = QueryMix()
) -> RequestSet:
    """`count` Rank requests for `relevance`: one query (context) drawn from `queries` and N ad embeddings each,
    N drawn from `mix`."""
    from adrank.client import build_request

    texts, ads = relevance_texts(models)
    embeddings = ad_embeddings(ads, models)
    sizes = mix.counts(count, seed)
    drawn = queries.draw(count, seed + 2, models) if queries.distinct else None
    rng = np.random.default_rng(seed + 1)
    payloads: list[bytes] = []
    feeds: list[dict[str, np.ndarray]] = []
    context: list[str] = []
    for i, n in enumerate(sizes):
        query = texts[int(rng.integers(0, len(texts)))] if drawn is None else drawn[i]
        ads_picked = np.ascontiguousarray(embeddings[rng.integers(0, len(embeddings), size=int(n))])
        request = build_request(["relevance"], {"ad_embedding": ads_picked}, {"query": [query]}, request_id=f"rel-{i}")
        payloads.append(request.SerializeToString())
        feeds.append({"ad_embedding": ads_picked})
        context.append(query)
    return RequestSet("relevance", RANK_METHOD, payloads, sizes, feeds, context)


def build(
    model: str,
    count: int,
    seed: int | None = None,
    candidates: int | None = None,
    mix: Mix = Mix(),
    queries: QueryMix = QueryMix(),
) -> RequestSet:
    """`count` requests of `model`, N drawn from `mix`; `candidates`: every request of that many (`Mix.fixed`);
    `queries`: relevance's query mix."""
    if candidates is not None:
        mix = Mix.fixed(candidates)
    if queries.distinct and model != "relevance":
        raise ValueError(f"a query mix ({queries.label}) is for relevance requests, not '{model}'")
    if model == "ctr":
        return ctr_requests(count, 1 if seed is None else seed, mix=mix)
    if model == "relevance":
        return relevance_requests(count, 2 if seed is None else seed, mix=mix, queries=queries)
    raise ValueError(f"no request builder for model '{model}'")


# --- KServe v2 (Triton, PyTriton) -----------------------------------------------------------------------------


def kserve_payloads(requests: RequestSet, output: str) -> list[bytes]:
    """The set's requests as KServe v2 ModelInferRequest bytes (adrank's own stubs of the protocol): the same
    rows, raw little-endian, asking for the score output."""
    from adrank.kserve import grpc_service_pb2 as kserve

    datatypes = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float64": "FP64"}
    payloads = []
    for i, feeds in enumerate(requests.feeds):
        request = kserve.ModelInferRequest(model_name=requests.model, id=f"kserve-{i}")
        for name, rows in feeds.items():
            rows = np.ascontiguousarray(rows)
            request.inputs.add(name=name, datatype=datatypes[rows.dtype.name], shape=list(rows.shape))
            request.raw_input_contents.append(rows.tobytes())
        request.outputs.add(name=output)
        payloads.append(request.SerializeToString())
    return payloads


def save_payloads(payloads: Sequence[bytes], candidates: np.ndarray, path: Path) -> None:
    offsets = np.cumsum([0, *(len(p) for p in payloads)]).astype(np.int64)
    blob = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    np.savez(path, blob=blob, offsets=offsets, candidates=candidates)


def load_payloads(path: Path) -> tuple[list[bytes], np.ndarray]:
    with np.load(path) as data:
        blob, offsets, candidates = data["blob"].tobytes(), data["offsets"], data["candidates"]
    return [blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)], candidates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kserve = sub.add_parser("kserve", help="write a ctr set's requests as KServe v2 ModelInferRequest payloads")
    kserve.add_argument("--count", type=int, default=1000)
    kserve.add_argument("--out", type=Path, required=True)
    show = sub.add_parser("summary", help="print a request set's candidate distribution")
    show.add_argument("--model", default="ctr")
    show.add_argument("--count", type=int, default=1000)
    show.add_argument("--queries", type=QueryMix.parse, default=QueryMix(), help="relevance: texts (default) or zipf")
    show.add_argument(
        "--mix", type=Mix.parse, default=Mix(), help="lognormal (default), ads, uniform:LOW-HIGH, fixed:N"
    )
    args = parser.parse_args(argv)
    if args.command == "kserve":
        requests = build("ctr", args.count)
        save_payloads(kserve_payloads(requests, "ctr"), requests.candidates, args.out)
    else:
        print(json.dumps(build(args.model, args.count, mix=args.mix, queries=args.queries).summary()))


if __name__ == "__main__":
    main()
