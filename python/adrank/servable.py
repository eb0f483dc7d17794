"""Servable: one version of one model, loaded and registered with the core, ready to take requests.

Loading a version: parse nothing twice (the config is already validated), create one backend session
per instance, register a model queue with the core's thread pool whose backend callable runs the
session of the instance the core picked, then warm it up: one batch through the core at every size a
batch can close at, so that the first real request pays for no allocation or kernel selection.

A client's call reaches the version through the registry it is registered in (`register`; the Rank
contract, cpp/rank_call.h, checks and converts it without Python). The server's own requests (golden
inputs: the load's parity check, publish's gates) take the same contract through `score`, so their checks
and messages are those of every call.

Thread-safety: `score` and `model.submit` may be called from any thread; `unload` once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import adrank._core as core
from adrank.backends import Session, create_backend
from adrank.log_format import log_fields
from adrank.repository.config import ModelConfig
from adrank.repository.meta import GoldenRequest
from adrank.status import RequestError, StatusCode
from adrank.tokenizer import text_row
from adrank.v1 import ranking_pb2 as pb
from adrank.wire import encode_all

log = logging.getLogger("adrank.servable")


# The server's own requests (warm-up, parity checks, publish's benchmark) run on an idle model but may be
# the first it ever runs (sessions initialising): far longer than the model's default deadline allows a
# caller, and nobody waits on them but the loader.
INTERNAL_TIMEOUT_S = 300.0

# Scores of a model that declares no output range: wide enough for logits and cosines alike; the values
# beyond it still count, in the histogram's outer bins.
DEFAULT_SCORE_RANGE = (-10.0, 10.0)
# What runs a version, as KServe v2's model metadata names it (Triton's platform names).
INFER_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}


@dataclass
class Servable:
    config: ModelConfig
    version: int
    version_dir: Path
    model: core.Model
    sessions: list[Session]
    # What this version did, for the rollout guardrails (cpp/version_stats.h).
    stats: core.VersionStats
    # Its context tower's outputs per distinct context (cpp/context_cache.h), when its config declares one with a
    # cache; shared by its instances, dropped at unload.
    context_cache: core.ContextCache | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def input_names(self) -> set[str]:
        return {t.name for t in self.config.inputs}

    @staticmethod
    def load(
        pool: core.ThreadPool,
        config: ModelConfig,
        version_dir: Path,
        version: int,
        tenants: core.TenantOptions | None = None,
    ) -> Servable:
        backend = create_backend(config.backend)
        sessions = [backend.load(version_dir, config, i) for i in range(config.instances)]

        def run(batch: core.Batch) -> None:
            sessions[batch.instance].run(batch)

        model = pool.add_model(
            f"{config.name}:{version}",
            config.core_signature(),
            run,
            batching=config.batcher_options(tenants),
            instances=config.instances,
        )
        low, high = config.outputs[0].range or DEFAULT_SCORE_RANGE
        if low == high:
            low, high = low - 1.0, high + 1.0
        stats = core.VersionStats(low, high)
        return Servable(config, version, version_dir, model, sessions, stats, backend.context_cache)

    def register(
        self, registry: core.ModelRegistry, serving: bool = False, stats: core.VersionStats | None = None
    ) -> None:
        """Makes this version routable: the registry's front ends check and convert its requests from
        `served_inputs` without Python, and record its outcomes in `stats` (this version's unless given)."""
        registry.add(
            self.model,
            self.name,
            self.version,
            self.served_inputs(),
            self.config.score_output,
            self.config.max_candidates,
            self.lowest_priority,
            stats or self.stats,
            serving=serving,
            platform=INFER_PLATFORMS[self.config.backend],
        )

    def parity_atol(self, golden_atol: float) -> float:
        """The load-time parity check's tolerance: the config's `parity_atol` if set, else the golden one
        (made on a CPU) widened to what this version's sessions compute with (a GPU's arithmetic)."""
        if self.config.parity_atol is not None:
            return self.config.parity_atol
        return max([golden_atol, *(s.parity_atol for s in self.sessions if s.parity_atol is not None)])

    @property
    def lowest_priority(self) -> int:
        """The priority class mirrored (shadow) requests ride in."""
        return self.config.batching.priority_levels - 1

    def served_inputs(self) -> list[core.ServedInput]:
        """What a front end checks per input: the core's spec of it (ModelConfig.core_signature, one per
        input, in order), whether NaN/inf are refused, and for a text input the width of its byte row."""
        return [
            core.ServedInput(
                spec.name,
                spec.dtype,
                spec.row_shape,
                spec.role,
                t.allow_nonfinite,
                t.tokenizer.max_bytes if t.tokenizer is not None else 0,
            )
            for t, spec in zip(self.config.inputs, self.config.core_signature().inputs, strict=True)
        ]

    def warm_up(self) -> None:
        """One batch through the core at every preferred size (each request at most max_candidates)."""
        for rows in self.config.batching.warmup_sizes():
            pending = []
            remaining = rows
            while remaining > 0:
                n = min(remaining, self.config.max_candidates)
                candidates, context = self.synthetic_request(n)
                pending.append(self.model.submit(candidates, context, timeout_s=INTERNAL_TIMEOUT_S))
                remaining -= n
            for request in pending:
                request.wait()
        log.info(
            "%s version %d warmed up at %s rows",
            self.name,
            self.version,
            self.config.batching.warmup_sizes(),
            extra=log_fields(model=self.name, version=self.version),
        )

    def synthetic_request(self, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Zeros of the right shapes (and a short text), already prepared for the core."""
        candidates: dict[str, np.ndarray] = {}
        context: dict[str, np.ndarray] = {}
        for t in self.config.inputs:
            if t.tokenizer is not None:
                context[t.name] = text_row("warm up", t.tokenizer.max_bytes)
                continue
            target = context if t.role == "context" else candidates
            target[t.name] = np.zeros([1 if t.role == "context" else rows, *t.shape], dtype=t.dtype)
        return candidates, context

    def score(self, requests: Sequence[GoldenRequest], timeout_s: float = INTERNAL_TIMEOUT_S) -> list[np.ndarray]:
        """Each request's float32 scores, run through the core's Rank contract (cpp/rank_call.h) exactly as a
        client's call is (decoded, checked against this version's signature, batched) but on a registry of
        this version alone, with stats of its own: no client call reaches the version meanwhile, and its
        metrics count only its clients' calls. A request the queue refuses for its predicted wait is sent again
        once those ahead of it are done: a busy machine slows the check, it does not fail it. RequestError with
        the call's status and message otherwise."""
        registry = core.ModelRegistry()
        self.register(registry, serving=True, stats=core.VersionStats())
        payloads = [self._request(c, x) for c, x in requests]
        scores: dict[int, np.ndarray] = {}
        waiting = list(range(len(payloads)))
        # All at once, as a burst of clients would send them; those the queue refuses for its predicted wait
        # (RESOURCE_EXHAUSTED: a machine busy with other work predicts long waits) go again once the others are
        # done. Each round's first request has an empty queue ahead and is taken: the rounds end.
        while waiting:
            calls = [(i, core.start_rank(registry, payloads[i], timeout_s=timeout_s)) for i in waiting]
            waiting = []
            for i, call in calls:
                call.wait()
                try:
                    reply = pb.RankResponse.FromString(call.result())
                except core.CoreError as error:
                    if StatusCode(error.grpc_code) == StatusCode.RESOURCE_EXHAUSTED and i != calls[0][0]:
                        waiting.append(i)
                        continue
                    raise RequestError(StatusCode(error.grpc_code), str(error)) from None
                scores[i] = np.frombuffer(reply.results[0].scores, dtype="<f4")
        return [scores[i] for i in range(len(payloads))]

    def _request(self, candidates: Mapping[str, np.ndarray], context: Mapping[str, np.ndarray]) -> bytes:
        request = pb.RankRequest(
            models=[pb.ModelSpec(name=self.name, version=self.version)],
            candidates=encode_all(candidates),
            context=encode_all(context),
        )
        return request.SerializeToString()

    def unload(self, pool: core.ThreadPool) -> None:
        """Stops taking requests, finishes the queued ones, frees the sessions and the context cache."""
        pool.remove_model(self.model)
        for session in self.sessions:
            session.close()
        if self.context_cache is not None:
            # Its outputs are this version's tower's: no other version may read them, and its memory goes now
            # rather than whenever the last reference to the Servable does.
            self.context_cache.clear()
