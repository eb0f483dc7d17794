"""Writes the fuzz targets' seed corpus (tests/fuzz/corpus/): real requests, made from the bundled models' golden
inputs (models/<model>/<version>/meta.json `golden.inputs`) exactly as a client makes them.

- corpus/rank_call: adrank.v1.RankRequest messages, built by adrank.client.build_request (the Python client's
  own encoder): each model's golden requests, whole and in slices of their rows, unpinned and pinned to each
  bundled version, with a priority (the lowest class: the default tenant may not ask for a higher one) and a
  routing key, and both models in one request.
- corpus/infer_call: inference.ModelInferRequest messages (KServe v2) of the same requests: the tensors' bytes in
  raw_input_contents as v2 clients send them, and in the typed contents (fp32_contents, int64_contents,
  bytes_contents), with v2's parameters (priority, routing_key, timeout) and the requested output; and the
  inputs that once crashed the target (regress-*).

Every file is the serialized message (deterministic serialization) and nothing else, named after what it is.
The script replaces the *.bin files of both folders; run it again after a bundled model's signature or golden
inputs change:

    .venv/bin/python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from google.protobuf.message import Message

from adrank.client import build_request
from adrank.kserve import grpc_service_pb2 as kserve
from adrank.repository.config import ModelConfig, load_model_config
from adrank.repository.meta import META_FILE, GoldenRequest, golden_requests, load_meta
from adrank.v1 import ranking_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
MODELS = ("ctr", "relevance")
# v2's datatype of each numpy dtype the bundled models take, and of text.
INFER_DATATYPES = {"float32": "FP32", "int64": "INT64"}
TEXT_DATATYPE = "BYTES"


def bundled(model: str) -> tuple[ModelConfig, list[int], list[GoldenRequest]]:
    """The model's config, its bundled versions (ascending) and the newest one's golden requests."""
    config = load_model_config(ROOT / "models" / model / "config.yaml")
    versions = sorted(int(p.name) for p in (ROOT / "models" / model).iterdir() if (p / META_FILE).is_file())
    meta = load_meta(ROOT / "models" / model / str(versions[-1]) / META_FILE)
    return config, versions, golden_requests(config, meta.golden.inputs)


def head(request: GoldenRequest, rows: int) -> GoldenRequest:
    """The request's first `rows` candidates, with its context."""
    candidates, context = request
    return {name: value[:rows] for name, value in candidates.items()}, context


def rank_seeds() -> Iterator[tuple[str, pb.RankRequest]]:
    requests = {model: bundled(model) for model in MODELS}
    for model, (_, versions, golden) in requests.items():
        for i, (candidates, context) in enumerate(golden):
            yield f"{model}-golden{i}", build_request([model], candidates, context, request_id=f"{model}-{i}")
        candidates, context = golden[0]
        rows = len(next(iter(candidates.values())))
        for n in sorted({1, min(4, rows)} - {rows}):
            part, part_context = head(golden[0], n)
            yield f"{model}-rows{n}", build_request([model], part, part_context, request_id=f"{model}-rows{n}")
        for version in versions:
            yield (
                f"{model}-pinned{version}",
                build_request([(model, version)], candidates, context, request_id=f"{model}-v{version}"),
            )
        yield (
            f"{model}-priority-routing",
            build_request([model], candidates, context, request_id="auction-1", priority=2, routing_key="user-42"),
        )
    # One auction scored by both models: the same 3 candidates carry each model's candidate inputs.
    relevance_candidates, relevance_context = requests["relevance"][2][0]
    rows = len(next(iter(relevance_candidates.values())))
    ctr_candidates, _ = head(requests["ctr"][2][0], rows)
    yield (
        "both-models",
        build_request(
            list(MODELS), {**ctr_candidates, **relevance_candidates}, relevance_context, request_id="auction-2"
        ),
    )


def infer_request(model: str, request: GoldenRequest, typed: bool, request_id: str) -> kserve.ModelInferRequest:
    """The v2 request of a golden one: raw_input_contents, or the typed contents when `typed`."""
    candidates, context = request
    infer = kserve.ModelInferRequest(model_name=model, id=request_id)
    for name, value in {**candidates, **context}.items():
        tensor = infer.inputs.add(name=name, shape=list(value.shape))
        if value.dtype == object:
            texts = [str(item).encode() for item in value.reshape(-1)]
            tensor.datatype = TEXT_DATATYPE
            if typed:
                tensor.contents.bytes_contents.extend(texts)
            else:
                infer.raw_input_contents.append(b"".join(struct.pack("<I", len(t)) + t for t in texts))
            continue
        tensor.datatype = INFER_DATATYPES[value.dtype.name]
        if not typed:
            infer.raw_input_contents.append(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes())
        elif value.dtype == np.float32:
            tensor.contents.fp32_contents.extend(value.reshape(-1).tolist())
        else:
            tensor.contents.int64_contents.extend(value.reshape(-1).tolist())
    return infer


def infer_seeds() -> Iterator[tuple[str, kserve.ModelInferRequest]]:
    for model in MODELS:
        config, versions, golden = bundled(model)
        for i, request in enumerate(golden):
            yield f"{model}-golden{i}", infer_request(model, request, False, f"{model}-{i}")
        yield f"{model}-typed", infer_request(model, golden[0], True, f"{model}-typed")
        rows = len(next(iter(golden[0][0].values())))
        for n in sorted({1, min(4, rows)} - {rows}):
            yield f"{model}-rows{n}", infer_request(model, head(golden[0], n), False, f"{model}-rows{n}")
        for version in versions:
            pinned = infer_request(model, golden[0], False, f"{model}-v{version}")
            pinned.model_version = str(version)
            yield f"{model}-pinned{version}", pinned
        parameters = infer_request(model, golden[-1], False, "auction-3")
        parameters.parameters["priority"].int64_param = 2
        parameters.parameters["routing_key"].string_param = "user-42"
        parameters.parameters["timeout"].int64_param = 1_000_000
        parameters.outputs.add(name=config.score_output)
        yield f"{model}-parameters", parameters
    # Inputs that once crashed infer_call_fuzz, kept as seeds (perf/results/fuzz-*.md): a "timeout" whose
    # nanoseconds, or the deadline they make, overflowed an int64 (UBSan).
    for name, kind, value in (("int64-max", "int64_param", 2**63 - 1), ("uint64-max", "uint64_param", 2**64 - 1)):
        overflow = infer_request("ctr", bundled("ctr")[2][0], False, f"regress-timeout-{name}")
        setattr(overflow.parameters["timeout"], kind, value)
        yield f"regress-timeout-{name}", overflow


def write(folder: Path, seeds: Iterator[tuple[str, Message]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.bin"):
        stale.unlink()
    for name, message in seeds:
        (folder / f"{name}.bin").write_bytes(message.SerializeToString(deterministic=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS, help="the corpus folder (default: %(default)s)")
    args = parser.parse_args()
    write(args.out / "rank_call", rank_seeds())
    write(args.out / "infer_call", infer_seeds())
    files = sorted(args.out.glob("*/*.bin"))
    print(f"{len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes, in {args.out}")


if __name__ == "__main__":
    main()
