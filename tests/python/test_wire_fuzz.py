"""Mutation fuzzing of Rank's wire bytes, against each front end.

Seeded and bounded: 5,000 requests derived from good ones (bit flips, truncation, splices, insertions,
random bytes, and valid protos with hostile field values: huge or negative shapes, too many dims, wrong
dtypes, raw sizes that do not match, garbage strings, huge N, duplicated tensors, out-of-range priority
and versions) are sent as raw bytes, many at once on one channel. Every answer must be OK (a
RankResponse) or a client error — never UNKNOWN, INTERNAL or UNIMPLEMENTED — and the server must still
serve a good request afterwards. A failure names each case by its index, kind and the seed, so that
`ADRANK_FUZZ_SEED=<seed>` reproduces it.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from adrank.client import build_request
from adrank.v1 import ranking_pb2 as pb
from served import FRONTENDS, ServerThread

SEED = int(os.environ.get("ADRANK_FUZZ_SEED", "15"))
CASES = 5000
IN_FLIGHT = 48  # calls outstanding at once on the channel
CLIENT_ERRORS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}
# Shapes a hostile client might send; raw sizes rarely match them.
HOSTILE_SHAPES = [
    [],
    [0],
    [-1, 13],
    [4, -26],
    [2**62],
    [2**31, 2**31],
    [0, 2**62],
    [1] * 40,
    [10**9, 13],
    [4, 13, 1],
    [2049, 13],
    [1, 0],
    [3, 384],
]


def seed_requests() -> list[pb.RankRequest]:
    rng = np.random.default_rng(SEED)
    ctr = {
        "dense": rng.standard_normal((4, 13)).astype(np.float32),
        "sparse": rng.integers(0, 10**6, (4, 26), dtype=np.int64),
    }
    ads = rng.standard_normal((3, 384)).astype(np.float32)
    return [
        build_request(["ctr"], ctr, request_id="fuzz-ctr"),
        build_request(["relevance"], {"ad_embedding": ads}, {"query": "running shoes"}, routing_key="k"),
        build_request(
            ["ctr", "relevance"],
            {"dense": ctr["dense"][:3], "sparse": ctr["sparse"][:3], "ad_embedding": ads},
            {"query": "trail héros 靴"},
            priority=1,
        ),
        build_request([("ctr", 1)], ctr),
    ]


class Mutator:
    """Derives case after case from the seed requests, by one of several mutations drawn at random."""

    def __init__(self, rng: random.Random, seeds: list[pb.RankRequest]) -> None:
        self.rng = rng
        self.seeds = seeds
        self.blobs = [s.SerializeToString() for s in seeds]
        self.kinds: list[tuple[str, Callable[[], bytes]]] = [
            ("bit flips", self.bit_flips),
            ("truncation", self.truncation),
            ("splice", self.splice),
            ("insertion", self.insertion),
            ("random bytes", self.random_bytes),
            ("hostile proto", self.hostile_proto),
            ("hostile proto", self.hostile_proto),
            ("hostile proto", self.hostile_proto),
        ]

    def case(self) -> tuple[str, bytes]:
        kind, make = self.rng.choice(self.kinds)
        return kind, make()

    def blob(self) -> bytearray:
        return bytearray(self.rng.choice(self.blobs))

    def bit_flips(self) -> bytes:
        data = self.blob()
        for _ in range(self.rng.randint(1, 8)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncation(self) -> bytes:
        data = self.blob()
        return bytes(data[: self.rng.randrange(len(data))])

    def splice(self) -> bytes:
        a, b = self.blob(), self.blob()
        return bytes(a[: self.rng.randrange(len(a) + 1)] + b[self.rng.randrange(len(b) + 1) :])

    def insertion(self) -> bytes:
        data = self.blob()
        at = self.rng.randrange(len(data) + 1)
        if self.rng.random() < 0.5:
            piece = self.rng.randbytes(self.rng.randint(1, 16))
        else:  # a copy of a stretch of the message itself: repeated or misplaced fields
            start = self.rng.randrange(len(data))
            piece = data[start : start + self.rng.randint(1, 64)]
        return bytes(data[:at] + piece + data[at:])

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 1, 2, 5, 17, 100, 1000, 5000]))

    def garbage_text(self) -> str:
        choice = self.rng.randrange(5)
        if choice == 0:
            return ""
        if choice == 1:
            return "x" * self.rng.choice([1000, 10_000, 100_000])
        if choice == 2:
            return "".join(chr(self.rng.choice([0, 0x7F, 0xE9, 0x202E, 0xFFFF, 0x1F600])) for _ in range(20))
        if choice == 3:
            return self.rng.choice(["ctr", "relevance", "dense", "sparse", "query", "ad_embedding"])
        return self.rng.randbytes(12).hex()

    def hostile_tensor(self, tensor: pb.Tensor) -> None:
        edit = self.rng.randrange(6)
        if edit == 0:
            del tensor.shape[:]
            tensor.shape.extend(self.rng.choice(HOSTILE_SHAPES))
        elif edit == 1:
            tensor.dtype = self.rng.choice([-7, 0, 1, 5, 9, 10, 11, 12, 40, 2**31 - 1])
        elif edit == 2:
            raw = tensor.raw_data
            tensor.raw_data = self.rng.choice(
                [b"", raw[:-1], raw + b"\0", raw[: len(raw) // 2], self.rng.randbytes(len(raw)), raw * 2]
            )
        elif edit == 3:
            tensor.name = self.garbage_text()
        elif edit == 4:  # a valid-looking huge N: the shape claims far more rows than the bytes hold
            rows = self.rng.choice([2048, 2049, 10**6, 2**40])
            del tensor.shape[:1]
            tensor.shape.insert(0, rows)
        else:
            tensor.dtype = pb.DATA_TYPE_STRING
            tensor.raw_data = self.rng.choice([b"", b"\xff\xff\xff\xff", b"\x02\0\0\0\xc3\x28", self.rng.randbytes(9)])

    def hostile_proto(self) -> bytes:
        request = pb.RankRequest()
        request.CopyFrom(self.rng.choice(self.seeds))
        for _ in range(self.rng.randint(1, 3)):
            edit = self.rng.randrange(9)
            tensors = [*request.candidates, *request.context]
            if edit <= 3 and tensors:
                self.hostile_tensor(self.rng.choice(tensors))
            elif edit == 4:
                request.request_id = self.garbage_text()
                request.routing_key = self.garbage_text()
            elif edit == 5:
                spec = self.rng.choice(request.models) if request.models else request.models.add()
                spec.name = self.garbage_text() if self.rng.random() < 0.5 else spec.name
                spec.version = self.rng.choice([-1, 0, 1, 2, 999, 2**63 - 1, -(2**63)])
            elif edit == 6:
                request.priority = self.rng.choice([0, 1, 2, 7, 255, 2**32 - 1])
            elif edit == 7 and tensors:  # duplicated, or moved between candidates and context
                tensor = self.rng.choice(tensors)
                target = request.context if self.rng.random() < 0.5 else request.candidates
                target.add().CopyFrom(tensor)
            else:
                self.rng.choice([request.models, request.candidates, request.context]).add()
        return request.SerializeToString()


def rank_answered(reply: bytes) -> bool:
    return bool(pb.RankResponse.FromString(reply).results)


def send_all(
    target: str,
    cases: list[tuple[str, bytes]],
    method: str = "/adrank.v1.Ranking/Rank",
    answered: Callable[[bytes], bool] = rank_answered,
) -> tuple[Counter, list[str], float]:
    """Sends every case to `method`, IN_FLIGHT at a time; returns the codes seen, the wrong answers (a code
    that is no client error, or an OK reply `answered` finds empty) and the seconds."""
    codes: Counter = Counter()
    wrong: list[str] = []
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    started = time.monotonic()
    with grpc.insecure_channel(target, options=options) as channel:
        rank = channel.unary_unary(method)  # bytes in, bytes out

        def settle(index: int, kind: str, future: grpc.Future) -> None:
            error = future.exception()
            code = grpc.StatusCode.OK if error is None else error.code()
            codes[code.name] += 1
            if code not in CLIENT_ERRORS:
                wrong.append(f"case {index} ({kind}, seed {SEED}): {code.name}: {error.details()!r:.300}")
            elif error is None and not answered(future.result()):
                wrong.append(f"case {index} ({kind}, seed {SEED}): OK without results")

        pending: deque = deque()
        for index, (kind, data) in enumerate(cases):
            pending.append((index, kind, rank.future(data, timeout=30)))
            if len(pending) >= IN_FLIGHT:
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    return codes, wrong, time.monotonic() - started


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request):
    running = ServerThread(frontend=request.param).start()
    yield running
    running.stop()


def test_mutated_requests_get_ok_or_a_client_error_and_the_server_keeps_serving(server):
    seeds = seed_requests()
    mutator = Mutator(random.Random(SEED), seeds)
    cases = [mutator.case() for _ in range(CASES)]
    codes, wrong, seconds = send_all(server.target, cases)
    print(f"\n{server.server.frontend.kind} front end: {CASES} cases in {seconds:.1f} s: {dict(codes)}")
    assert wrong == [], "\n".join(wrong[:20])
    assert sum(codes.values()) == CASES
    assert codes["INVALID_ARGUMENT"] > CASES // 4  # the cases were hostile, and were refused as such
    # The server is whole: a good request of each kind is answered, and nothing was counted UNKNOWN,
    # INTERNAL or UNIMPLEMENTED on its side either.
    after, wrong_after, _ = send_all(server.target, [("good", s.SerializeToString()) for s in seeds])
    assert wrong_after == [] and after == Counter({"OK": len(seeds)})
    counts = server.server.frontend.admission.call_counts()
    for code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED):
        assert counts[code.value[0]] == 0, code
