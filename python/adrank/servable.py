"""Servable: one version of one model, loaded and registered with the core, ready to take requests.

Loading a version: parse nothing twice (the config is already validated), create one backend session
per instance, register a model queue with the core's thread pool whose backend callable runs the
session of the instance the core picked, then warm it up: one batch through the core at every size a
batch can close at, so that the first real request pays for no allocation or kernel selection.

`prepare` turns a request's decoded tensors into what this model's core queue takes: it picks the
model's inputs, checks what the core cannot (text becomes its UTF-8 byte row; N against `max_candidates`; NaN
and inf where the config forbids them; dtypes, so that the message names the wire dtype) and leaves
names, trailing dims and byte sizes to the core's own validation. Every error is a RequestError with
the gRPC status to answer and a message that names the model and the field.

Thread-safety: `prepare` and `model.submit` may be called from any thread; `unload` once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import adrank._core as core
from adrank.backends import Session, create_backend
from adrank.repository.config import FLOAT_DTYPES, ModelConfig, TensorConfig
from adrank.status import RequestError, StatusCode
from adrank.tokenizer import text_row

log = logging.getLogger("adrank.servable")


def invalid(message: str) -> RequestError:
    return RequestError(StatusCode.INVALID_ARGUMENT, message)


# The server's own requests (warm-up, parity checks, publish's benchmark) run on an idle model but may be
# the first it ever runs (sessions initialising): far longer than the model's default deadline allows a
# caller, and nobody waits on them but the loader.
INTERNAL_TIMEOUT_S = 300.0

# Scores of a model that declares no output range: wide enough for logits and cosines alike; the values
# beyond it still count, in the histogram's outer bins.
DEFAULT_SCORE_RANGE = (-10.0, 10.0)


@dataclass
class Servable:
    config: ModelConfig
    version: int
    version_dir: Path
    model: core.Model
    sessions: list[Session]
    # What this version did, for the rollout guardrails (cpp/version_stats.h).
    stats: core.VersionStats

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
        return Servable(config, version, version_dir, model, sessions, core.VersionStats(low, high))

    def register(self, registry: core.ModelRegistry) -> None:
        """Makes this version routable: the registry's front ends check and convert its requests from
        `served_inputs` without Python, and record its outcomes in `stats`."""
        registry.add(
            self.model,
            self.name,
            self.version,
            self.served_inputs(),
            self.config.score_output,
            self.config.max_candidates,
            self.lowest_priority,
            self.stats,
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
        log.info("%s version %d warmed up at %s rows", self.name, self.version, self.config.batching.warmup_sizes())

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

    def prepare(
        self, candidates: Mapping[str, np.ndarray], context: Mapping[str, np.ndarray], rows: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """This model's inputs from a request's decoded tensors, as its core queue takes them."""
        if rows > self.config.max_candidates:
            raise invalid(
                f"candidates: {rows} rows exceed model '{self.name}''s limit of {self.config.max_candidates} "
                "(max_candidates)"
            )
        core_candidates: dict[str, np.ndarray] = {}
        core_context: dict[str, np.ndarray] = {}
        for spec in self.config.inputs:
            sent_as_context = spec.name in context
            value = context.get(spec.name) if sent_as_context else candidates.get(spec.name)
            if value is None:
                raise invalid(f"{spec.role} tensor '{spec.name}' is missing: model '{self.name}' needs it")
            if sent_as_context != (spec.role == "context"):
                sent = "context" if sent_as_context else "candidates"
                raise invalid(
                    f"tensor '{spec.name}' was sent in {sent}, but model '{self.name}' takes it as {spec.role}"
                )
            if spec.tokenizer is not None:
                core_context[spec.name] = self._text_row(spec, value)
                continue
            self._check_values(spec, value)
            (core_context if sent_as_context else core_candidates)[spec.name] = value
        return core_candidates, core_context

    def _text_row(self, spec: TensorConfig, value: np.ndarray) -> np.ndarray:
        if value.dtype != object:
            raise invalid(f"context tensor '{spec.name}' has dtype {value.dtype}; model '{self.name}' expects string")
        if value.shape != (1,):
            raise invalid(f"context tensor '{spec.name}' has shape {list(value.shape)}; expected [1] (one text)")
        assert spec.tokenizer is not None, "config validation gives every string input a tokenizer"
        return text_row(value[0], spec.tokenizer.max_bytes)

    def _check_values(self, spec: TensorConfig, value: np.ndarray) -> None:
        where = f"{spec.role} tensor '{spec.name}'"
        if value.dtype == object:
            raise invalid(f"{where} is string; model '{self.name}' expects {spec.dtype}")
        if value.dtype.name != spec.dtype:
            raise invalid(f"{where} has dtype {value.dtype.name}; model '{self.name}' expects {spec.dtype}")
        if not spec.allow_nonfinite and spec.dtype in FLOAT_DTYPES:
            finite = np.isfinite(value)
            if not finite.all():
                row = int(np.argwhere(~finite)[0][0])
                raise invalid(f"{where}: row {row} holds NaN or inf; model '{self.name}' allows finite values only")

    def unload(self, pool: core.ThreadPool) -> None:
        """Stops taking requests, finishes the queued ones, frees the sessions."""
        pool.remove_model(self.model)
        for session in self.sessions:
            session.close()
