"""Mutation fuzzing of KServe v2's ModelInfer wire bytes, against each front end, as test_wire_fuzz.py does
for Rank: 5,000 cases derived from good ModelInferRequests (the byte-level mutations, and valid protos with
hostile v2 fields: datatypes, shapes, raw contents that do not match the inputs, typed contents beside raw
ones, parameters of the wrong type or range, versions that are no number). Every answer must be OK or a
client error — never UNKNOWN, INTERNAL or UNIMPLEMENTED — and the server must serve a good one after.
`ADRANK_FUZZ_SEED=<seed>` reproduces a failure.
"""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest
from test_wire_fuzz import CASES, HOSTILE_SHAPES, SEED, Mutator, seed_requests, send_all

from adrank.kserve import grpc_service_pb2 as kserve
from adrank.v1 import ranking_pb2 as pb
from served import FRONTENDS, ServerThread

METHOD = "/inference.GRPCInferenceService/ModelInfer"
DATATYPES = {pb.DATA_TYPE_FLOAT32: "FP32", pb.DATA_TYPE_INT64: "INT64", pb.DATA_TYPE_STRING: "BYTES"}


def infer_seeds() -> list[kserve.ModelInferRequest]:
    """The Rank seeds of one model each, as the ModelInferRequests they mean."""
    seeds = []
    for rank in seed_requests():
        if len(rank.models) != 1:
            continue
        request = kserve.ModelInferRequest(model_name=rank.models[0].name, id=rank.request_id)
        if rank.models[0].version:
            request.model_version = str(rank.models[0].version)
        for tensor in [*rank.candidates, *rank.context]:
            request.inputs.add(name=tensor.name, datatype=DATATYPES[tensor.dtype], shape=list(tensor.shape))
            request.raw_input_contents.append(tensor.raw_data)
        if rank.routing_key:
            request.parameters["routing_key"].string_param = rank.routing_key
        seeds.append(request)
    return seeds


def infer_answered(reply: bytes) -> bool:
    response = kserve.ModelInferResponse.FromString(reply)
    return len(response.outputs) == 1 and len(response.raw_output_contents) == 1


class InferMutator(Mutator):
    """The byte-level mutations of Mutator over ModelInferRequests, and hostile v2 protos."""

    def __init__(self, rng: random.Random, seeds: list[kserve.ModelInferRequest]) -> None:
        super().__init__(rng, [])
        self.infer_seeds = seeds
        self.blobs = [s.SerializeToString() for s in seeds]

    def hostile_proto(self) -> bytes:
        request = kserve.ModelInferRequest()
        request.CopyFrom(self.rng.choice(self.infer_seeds))
        for _ in range(self.rng.randint(1, 3)):
            self.hostile_edit(request)
        return request.SerializeToString()

    def hostile_edit(self, request: kserve.ModelInferRequest) -> None:
        edit = self.rng.randrange(9)
        tensor = self.rng.choice(request.inputs) if request.inputs else request.inputs.add()
        if edit == 0:
            tensor.datatype = self.rng.choice(
                ["", "fp32", "UINT32", "BF16", "FP16", "BOOL", "BYTES", self.garbage_text()]
            )
        elif edit == 1:
            del tensor.shape[:]
            tensor.shape.extend(self.rng.choice(HOSTILE_SHAPES))
        elif edit == 2 and request.raw_input_contents:  # raw contents that do not match, or one too few/many
            choice = self.rng.randrange(3)
            if choice == 0:
                i = self.rng.randrange(len(request.raw_input_contents))
                request.raw_input_contents[i] = self.rng.randbytes(self.rng.choice([0, 3, 52, 4096]))
            elif choice == 1:
                del request.raw_input_contents[-1]
            else:
                request.raw_input_contents.append(b"\0" * 8)
        elif edit == 3:  # typed contents, beside raw ones or instead of them
            if self.rng.random() < 0.5:
                del request.raw_input_contents[:]
            contents = tensor.contents
            contents.fp32_contents.extend([float("nan"), 1e39, -0.0][: self.rng.randint(0, 3)])
            contents.int64_contents.extend([2**63 - 1, -(2**63)][: self.rng.randint(0, 2)])
            contents.int_contents.extend([2**31 - 1, -(2**31)][: self.rng.randint(0, 2)])
            contents.bytes_contents.extend([b"", b"\xff\xfe", b"q" * 70_000][: self.rng.randint(0, 3)])
        elif edit == 4:
            name = self.rng.choice(["priority", "timeout", "routing_key", "binary_data_output", self.garbage_text()])
            parameter = request.parameters[name]
            kind = self.rng.randrange(5)
            if kind == 0:
                parameter.int64_param = self.rng.choice([-1, 0, 1, 2**31, 2**63 - 1, -(2**63)])
            elif kind == 1:
                parameter.uint64_param = self.rng.choice([0, 1, 2**32, 2**64 - 1])
            elif kind == 2:
                parameter.string_param = self.garbage_text()
            elif kind == 3:
                parameter.double_param = self.rng.choice([float("nan"), -1.5, 1e300])
            else:
                parameter.bool_param = True
        elif edit == 5:
            request.model_version = self.rng.choice(["", "0", "-1", "01", "1.0", "v1", "99999999999999999999", "1"])
        elif edit == 6:
            request.model_name = self.garbage_text()
        elif edit == 7:
            request.outputs.add(name=self.rng.choice(["ctr", "relevance", "logits", ""]))
        else:  # a duplicated input
            request.inputs.add().CopyFrom(tensor)
            if request.raw_input_contents:
                request.raw_input_contents.append(request.raw_input_contents[0])


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request):
    running = ServerThread(frontend=request.param).start()
    yield running
    running.stop()


def test_mutated_infer_requests_get_ok_or_a_client_error_and_the_server_keeps_serving(server):
    seeds = infer_seeds()
    mutator = InferMutator(random.Random(SEED), seeds)
    cases = [mutator.case() for _ in range(CASES)]
    codes, wrong, seconds = send_all(server.target, cases, METHOD, infer_answered)
    print(f"\n{server.server.frontend.kind} front end: {CASES} ModelInfer cases in {seconds:.1f} s: {dict(codes)}")
    assert wrong == [], "\n".join(wrong[:20])
    assert sum(codes.values()) == CASES
    assert codes["INVALID_ARGUMENT"] > CASES // 4  # the cases were hostile, and were refused as such
    good = [("good", s.SerializeToString()) for s in seeds]
    after, wrong_after, _ = send_all(server.target, good, METHOD, infer_answered)
    assert wrong_after == [] and after == Counter({"OK": len(seeds)})
    counts = server.server.frontend.admission.call_counts()
    for code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED):
        assert counts[code.value[0]] == 0, code
