"""Score real Criteo rows against a running adrank server, as an ads server would.

    make serve                                  # in one terminal (gRPC on 127.0.0.1:8500)
    .venv/bin/python examples/rank_example.py   # in another

Each auction sends N candidate ads (their `dense` and `sparse` features) and gets back a click
probability per candidate; with --query it also asks the relevance model for the query-ad similarity
of each candidate (ad embeddings made from ad titles with the relevance model's own encoder).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from criteo import read_rows  # examples/criteo.py, beside this script

from adrank.client import RankClient

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "criteo" / "sample_200.csv"
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
    parser.add_argument("--data", type=Path, default=DATA, help="a Criteo CSV (see ../shared/data/README.md)")
    parser.add_argument("--auctions", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--query", default="", help="also score query-ad relevance for this query")
    parser.add_argument("--timeout", type=float, default=0.05, help="the auction's deadline, seconds")
    args = parser.parse_args()

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


def embed_titles(client: RankClient, args: argparse.Namespace) -> np.ndarray:
    """The ad titles' embeddings, made locally with the served relevance model's encoder."""
    from adrank.embed import TextEmbedder
    from adrank.repository import ModelRepository

    entry = ModelRepository(Path(__file__).resolve().parents[1] / "models").entry("relevance")
    embedder = TextEmbedder(entry.version_dir(entry.versions[-1]), entry.config)
    return embedder.embed(AD_TITLES)


if __name__ == "__main__":
    main()
