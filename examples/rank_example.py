"""Score real Criteo rows against a running adrank server, as an ads server would.

    make serve                                  # in one terminal (gRPC on 127.0.0.1:8500)
    .venv/bin/python examples/rank_example.py   # in another

Each auction sends N candidate ads (their `dense` and `sparse` features) and gets back a click
probability per candidate; with --query it also asks the relevance model for the query-ad similarity
of each candidate (ad embeddings made from ad titles with the relevance model's own encoder).

The rows are Criteo's, from --data (default: ../shared/data/criteo/sample_200.csv beside the checkout, which
the repository does not ship). Without that file the example runs from what the repository ships, saying so
in one line: each model's golden requests (in its newest version's meta.json), each scored by the server
and compared with the scores recorded for it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from criteo import read_rows  # examples/criteo.py, beside this script

from adrank.client import RankClient, RankError
from adrank.repository import ModelRepository
from adrank.repository.meta import META_FILE, golden_outputs, golden_requests, load_meta

CHECKOUT = Path(__file__).resolve().parents[1]
MODELS = CHECKOUT / "models"
DATA = CHECKOUT.parent / "shared" / "data" / "criteo" / "sample_200.csv"
AD_TITLES = [
    "Trail running shoes, free returns",
    "Lightweight running shoes for women",
    "Noise cancelling headphones sale",
    "Cheap flights to Lisbon",
    "Car insurance quote in 5 minutes",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:8500")
    parser.add_argument(
        "--data", type=Path, default=DATA, help="a Criteo CSV (see ../shared/data/README.md); missing: golden requests"
    )
    parser.add_argument("--auctions", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--query", default="", help="also score query-ad relevance for this query")
    parser.add_argument("--timeout", type=float, default=0.05, help="the auction's deadline, seconds")
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"no Criteo rows at {args.data}: scoring each model's golden requests from its newest meta.json instead")
        rank_golden_requests(args)
        return
    rows = read_rows(args.data)
    with RankClient(args.target) as client:
        client.wait_until_serving(timeout=60)
        ad_embeddings = embed_titles(client, args) if args.query else None
        for auction in range(args.auctions):
            start = (auction * args.candidates) % max(len(rows) - args.candidates, 1)
            batch = rows.take(slice(start, start + args.candidates))
            candidates = {"dense": batch.dense, "sparse": batch.sparse}
            models = ["ctr"]
            context = None
            if ad_embeddings is not None:
                candidates["ad_embedding"] = ad_embeddings[np.arange(len(batch)) % len(ad_embeddings)]
                context = {"query": args.query}
                models.append("relevance")
            sent = time.perf_counter()
            result = client.rank(models, candidates, context, timeout=args.timeout, request_id=f"auction-{auction}")
            elapsed_ms = (time.perf_counter() - sent) * 1000
            ctr = result["ctr"]
            best = int(np.argmax(ctr.scores))
            line = (
                f"auction {auction}: {len(batch)} candidates in {elapsed_ms:.2f} ms (server {result.server_us} us); "
                f"ctr v{ctr.version} mean {ctr.scores.mean():.4f}, best candidate {best} ({ctr.scores[best]:.4f}, "
                f"label {batch.labels[best]})"
            )
            if "relevance" in result:
                line += f"; relevance mean {result['relevance'].scores.mean():.3f}"
            print(line)


def rank_golden_requests(args: argparse.Namespace) -> None:
    """Each bundled model's golden requests (models/<name>/<newest>/meta.json), scored by the server and
    compared with the scores that version recorded for them: all the inputs the repository itself ships."""
    failed = 0
    with RankClient(args.target) as client:
        client.wait_until_serving(timeout=60)
        for entry in ModelRepository(MODELS).entries():
            version = entry.versions[-1]
            golden = load_meta(entry.version_dir(version) / META_FILE).golden
            expected = golden_outputs(entry.config, golden.outputs)
            start = 0
            for i, (candidates, context) in enumerate(golden_requests(entry.config, golden.inputs)):
                rows = len(next(iter(candidates.values())))
                name = f"{entry.name} v{version} golden request {i}: {rows} candidates"
                sent = time.perf_counter()
                try:
                    result = client.rank([(entry.name, version)], candidates, context, timeout=args.timeout)
                except RankError as error:  # the server's refusal names the code and the field
                    print(f"{name}: {error}")
                    failed += 1
                    continue
                finally:
                    start += rows
                elapsed_ms = (time.perf_counter() - sent) * 1000
                scores = result[entry.name].scores
                off = float(np.max(np.abs(scores - expected[start - rows : start])))
                shown = np.array2string(scores[:3], precision=4) + (" ..." if rows > 3 else "")
                print(f"{name} in {elapsed_ms:.2f} ms; scores {shown}, {off:.1e} at most from meta.json's")
    if failed:
        raise SystemExit(1)


def embed_titles(client: RankClient, args: argparse.Namespace) -> np.ndarray:
    """The ad titles' embeddings, made locally with the served relevance model's encoder."""
    from adrank.embed import TextEmbedder

    entry = ModelRepository(MODELS).entry("relevance")
    embedder = TextEmbedder(entry.version_dir(entry.versions[-1]), entry.config)
    return embedder.embed(AD_TITLES)


if __name__ == "__main__":
    main()
