"""The naive baseline: a grpc.aio server for `adrank.v1.Ranking/Rank` that runs the model once per request.

What a team writes by hand before it has a serving system: the generated stubs, one ONNX Runtime session per
model (the model config's thread counts), and in the handler one `session.run` on the request's own candidates
(no batching across requests, no queue, no deadlines). For `relevance` the query is tokenized in the handler
(tokenizers, truncation to 32 tokens) and fed as one row with `row_request_index` all zeros.

    .venv/bin/python perf/baselines/naive_server.py --models ctr --port 0

prints `naive: SERVING ctr on grpc 127.0.0.1:PORT` on stderr once it listens; SIGTERM stops it (exit 0).
With `--echo` it parses each request and answers an empty response without running anything: the floor that
gRPC, Python and the load generator put under any server's latency on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import yaml
from tokenizers import Tokenizer

from adrank.v1 import ranking_pb2 as pb
from adrank.v1 import ranking_pb2_grpc as pb_grpc

MODELS = Path(__file__).resolve().parents[2] / "models"
_DTYPES = {pb.DATA_TYPE_FLOAT32: np.float32, pb.DATA_TYPE_INT64: np.int64}


class NaiveModel:
    """One model: its session, and for a text input its tokenizer."""

    def __init__(self, directory: Path) -> None:
        config = yaml.safe_load((directory / "config.yaml").read_text())
        version = max(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        options = ort.SessionOptions()
        options.intra_op_num_threads = config["onnxruntime"]["intra_op_num_threads"]
        options.inter_op_num_threads = config["onnxruntime"]["inter_op_num_threads"]
        self.version = version
        self.session = ort.InferenceSession(
            str(directory / str(version) / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.output = config["outputs"][0]["name"]
        self.tokenizer: Tokenizer | None = None
        for spec in config["inputs"]:
            if "tokenizer" in spec:
                self.text_input = spec["name"]
                self.tokens = spec["tokenizer"]
                self.tokenizer = Tokenizer.from_file(str(directory / str(version) / self.tokens["file"]))
                self.tokenizer.enable_truncation(max_length=self.tokens["max_length"])

    def score(self, request: pb.RankRequest) -> bytes:
        feeds: dict[str, np.ndarray] = {}
        rows = 0
        for tensor in request.candidates:
            array = np.frombuffer(tensor.raw_data, dtype=_DTYPES[tensor.dtype]).reshape(list(tensor.shape))
            feeds[tensor.name] = array
            rows = array.shape[0]
        if self.tokenizer is not None:
            query = next(t for t in request.context if t.name == self.text_input).raw_data
            (length,) = struct.unpack_from("<I", query)
            encoding = self.tokenizer.encode(query[4 : 4 + length].decode())
            feeds[self.tokens["input_ids"]] = np.array([encoding.ids], dtype=np.int64)
            feeds[self.tokens["attention_mask"]] = np.array([encoding.attention_mask], dtype=np.int64)
            feeds["row_request_index"] = np.zeros(rows, dtype=np.int64)
        (scores,) = self.session.run([self.output], feeds)
        return np.ascontiguousarray(scores, dtype="<f4").tobytes()


class NaiveRanking(pb_grpc.RankingServicer):
    def __init__(self, models: dict[str, NaiveModel], echo: bool = False) -> None:
        self.models = models
        self.echo = echo

    async def Rank(self, request: pb.RankRequest, context: grpc.aio.ServicerContext) -> pb.RankResponse:
        response = pb.RankResponse(request_id=request.request_id)
        if self.echo:  # the transport alone: parse the request, answer without scoring
            return response
        for spec in request.models:
            model = self.models.get(spec.name)
            if model is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{spec.name}' is not served")
            try:
                scores = model.score(request)
            except Exception as error:  # a bad request: the hand-written server says so and carries on
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            response.results.add(model=spec.name, version=model.version, scores=scores)
        return response


async def serve(models: Sequence[str], host: str, port: int, repository: Path, echo: bool = False) -> int:
    loaded = {} if echo else {name: NaiveModel(repository / name) for name in models}
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    pb_grpc.add_RankingServicer_to_server(NaiveRanking(loaded, echo), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    what = "echo (no model runs)" if echo else ", ".join(models)
    print(f"naive: SERVING {what} on grpc {host}:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(grace=2.0)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ctr", help="comma-separated model names from the repository")
    parser.add_argument("--repository", type=Path, default=MODELS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free port)")
    parser.add_argument("--echo", action="store_true", help="answer every call at once, scoring nothing")
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(serve(args.models.split(","), args.host, args.port, args.repository, args.echo)))


if __name__ == "__main__":
    main()
