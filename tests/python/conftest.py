"""Shared fixtures: a small matrix-product "model" served by the core; every test's audit logs kept in its
own tmp dir ($XDG_STATE_HOME, the default --audit-log's root), never in the user's state or across tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import adrank

DENSE = 13
USER = 4


@dataclass
class MatmulModel:
    """score = dense @ w + user @ v (user is context, broadcast by the core); row_id is echoed."""

    w: np.ndarray
    v: np.ndarray

    @staticmethod
    def create(seed: int = 0) -> MatmulModel:
        rng = np.random.default_rng(seed)
        return MatmulModel(rng.standard_normal((DENSE, 1)), rng.standard_normal((USER, 1)))

    def signature(self) -> adrank.ModelSignature:
        return adrank.ModelSignature(
            inputs=[
                adrank.TensorSpec("dense", "float64", [DENSE]),
                adrank.TensorSpec("row_id", "int64", []),
                adrank.TensorSpec("user", "float64", [USER], adrank.Role.CONTEXT),
            ],
            outputs=[adrank.TensorSpec("score", "float64"), adrank.TensorSpec("row_id_out", "int64")],
        )

    def __call__(self, batch: adrank.Batch) -> None:
        inputs = batch.inputs
        batch.outputs["score"][:] = (inputs["dense"] @ self.w + inputs["user"] @ self.v)[:, 0]
        batch.outputs["row_id_out"][:] = inputs["row_id"]

    def expected(self, dense: np.ndarray, user: np.ndarray) -> np.ndarray:
        return (dense @ self.w + user @ self.v)[:, 0]


def make_request(rng: np.random.Generator, rows: int, first_id: int) -> tuple[dict, dict]:
    candidates = {
        "dense": rng.standard_normal((rows, DENSE)),
        "row_id": np.arange(first_id, first_id + rows, dtype=np.int64),
    }
    context = {"user": rng.standard_normal((1, USER))}
    return candidates, context


@pytest.fixture
def pool() -> Iterator[adrank.ThreadPool]:
    options = adrank.MemoryPoolOptions()
    options.use_cuda = False
    pool = adrank.ThreadPool(num_workers=2, memory_pool=adrank.MemoryPool(options))
    yield pool
    pool.shutdown()


@pytest.fixture
def matmul() -> MatmulModel:
    return MatmulModel.create()


def scheduling_batching(**overrides: object) -> adrank.BatcherOptions:
    """Batcher options for tests of batching, scheduling and completion: no admission by predicted wait and
    no default deadline (on a loaded machine those refuse by its timing, cpp/batcher.h), and the default
    tenant may fill the queue. The admission tests set their own."""
    options = adrank.BatcherOptions()
    options.max_predicted_wait_us = 0
    options.default_deadline_us = 0
    options.tenants.defaults.max_queued_rows = options.max_queue_rows
    options.tenants.defaults.max_in_flight = 1 << 20
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


@pytest.fixture(autouse=True)
def audit_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$XDG_STATE_HOME for this test (and the servers it starts): a rollback reads the audit log, so a log
    left by an earlier test or run must not be read."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state
