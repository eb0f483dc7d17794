"""The core through its Python binding, end to end with a numpy model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator, Mapping

import numpy as np
import pytest

import adrank
from conftest import DENSE, USER, MatmulModel, make_request, scheduling_batching


def batching(**overrides: object) -> adrank.BatcherOptions:
    return scheduling_batching(**overrides)


class Gate:
    """A backend wrapper that holds every batch until released, so tests can fill the queue."""

    def __init__(self, model: MatmulModel) -> None:
        self.model = model
        self.open = threading.Event()
        self.entered = threading.Event()
        self.rows_seen: list[np.ndarray] = []

    def __call__(self, batch: adrank.Batch) -> None:
        self.entered.set()
        assert self.open.wait(30), "gate never opened"
        self.rows_seen.append(batch.inputs["row_id"].copy())
        self.model(batch)


def test_scores_match_the_model_with_context_broadcast(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    rng = np.random.default_rng(1)
    candidates, context = make_request(rng, 250, 0)
    result = model.submit(candidates, context, timeout_s=5).wait(10)
    np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
    np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])
    assert result.batch_rows == 250
    assert result.outputs["score"].shape == (250,)


def test_64_concurrent_threads_each_get_exactly_their_own_rows(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, batching(max_batch_rows=256, max_queue_delay_us=500))
    failures: list[str] = []
    merged = []

    def client(thread: int) -> None:
        rng = np.random.default_rng(100 + thread)
        for k in range(10):
            rows = int(rng.integers(1, 120))
            first_id = thread * 1_000_000 + k * 1000
            candidates, context = make_request(rng, rows, first_id)
            result = model.submit(candidates, context).wait(60)
            merged.append(result.batch_rows > rows)
            if not np.array_equal(result.outputs["row_id_out"], candidates["row_id"]):
                failures.append(f"thread {thread} request {k}: rows of another request")
            expected = matmul.expected(candidates["dense"], context["user"])
            if not np.allclose(result.outputs["score"], expected, rtol=1e-12, atol=1e-12):
                failures.append(f"thread {thread} request {k}: wrong scores")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    stats = model.stats()
    assert stats["completed_ok"] == 640
    assert stats["batches"] < 640, "64 concurrent clients should share batches"
    assert any(merged)


def test_large_request_is_split_and_reassembled(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, batching(max_batch_rows=64))
    candidates, context = make_request(np.random.default_rng(2), 1000, 0)
    result = model.submit(candidates, context).wait(10)
    np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])
    np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
    assert result.batches == 16  # ceil(1000 / 64)


def test_backend_gets_views_over_pooled_buffers_that_are_reused(pool, matmul):
    seen: list[tuple[bool, bool]] = []

    def backend(batch: adrank.Batch) -> None:
        seen.append((batch.inputs["dense"].flags.owndata, batch.outputs["score"].flags.owndata))
        matmul(batch)

    model = pool.add_model("matmul", matmul.signature(), backend, scheduling_batching())
    rng = np.random.default_rng(3)
    model.submit(*make_request(rng, 50, 0)).wait(10)
    misses = pool.memory_pool.stats()["misses"]
    for i in range(20):
        model.submit(*make_request(rng, 50, i)).wait(10)
    assert all(not owns for pair in seen for owns in pair), "backend got copies, not views"
    stats = pool.memory_pool.stats()
    assert stats["misses"] == misses, "same-size batches must reuse pooled buffers"
    assert stats["in_use_bytes"] == 0


def test_backend_may_return_outputs_instead_of_writing_them(pool, matmul):
    def returns_dict(batch: adrank.Batch) -> dict[str, np.ndarray]:
        i = batch.inputs
        return {"score": (i["dense"] @ matmul.w + i["user"] @ matmul.v)[:, 0], "row_id_out": i["row_id"]}

    def returns_list(batch: adrank.Batch) -> list[np.ndarray]:
        return list(returns_dict(batch).values())

    candidates, context = make_request(np.random.default_rng(4), 30, 7)
    for name, backend in [("dict", returns_dict), ("list", returns_list)]:
        model = pool.add_model(name, matmul.signature(), backend, scheduling_batching())
        result = model.submit(candidates, context).wait(10)
        np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
        np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])


def test_backend_returning_a_wrong_shape_fails_the_batch_with_internal(pool, matmul):
    model = pool.add_model(
        "bad",
        matmul.signature(),
        lambda batch: {"score": np.zeros(3), "row_id_out": np.zeros(3)},
        scheduling_batching(),
    )
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(np.random.default_rng(5), 10, 0)).wait(10)
    assert error.value.code == "INTERNAL"
    assert "'score'" in str(error.value)


def test_backend_exception_fails_its_batch_and_the_model_keeps_serving(pool, matmul):
    calls = {"n": 0}

    def flaky(batch: adrank.Batch) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom in the model")
        matmul(batch)

    model = pool.add_model("flaky", matmul.signature(), flaky, scheduling_batching())
    rng = np.random.default_rng(6)
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 10, 0)).wait(10)
    assert error.value.code == "INTERNAL"
    assert "boom in the model" in str(error.value) and "flaky" in str(error.value)
    candidates, context = make_request(rng, 10, 0)
    result = model.submit(candidates, context).wait(10)
    np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])


@pytest.mark.parametrize(
    ("spoil", "code", "names"),
    [
        (lambda c, x: c.update(dense=c["dense"][:, :5]), "INVALID_ARGUMENT", "'dense'"),
        (lambda c, x: c.update(dense=c["dense"].astype(np.float32)), "INVALID_ARGUMENT", "'dense'"),
        (lambda c, x: c.pop("row_id"), "INVALID_ARGUMENT", "'row_id'"),
        (lambda c, x: c.update(row_id=c["row_id"][:3]), "INVALID_ARGUMENT", "'row_id'"),
        (lambda c, x: c.update(dense="not an array"), "INVALID_ARGUMENT", "'dense'"),
        (
            lambda c, x: c.update(dense=np.zeros((0, DENSE)), row_id=np.zeros(0, np.int64)),
            "INVALID_ARGUMENT",
            "'dense'",
        ),
        (lambda c, x: c.update(extra=np.zeros(10)), "INVALID_ARGUMENT", "'extra'"),
        (lambda c, x: x.update(user=np.zeros((2, USER))), "INVALID_ARGUMENT", "'user'"),
        (lambda c, x: c.update(dense=c["dense"].astype(">f8")), "INVALID_ARGUMENT", "'dense'"),
        (lambda c, x: c.update(dense=c["dense"].astype(np.complex128)), "INVALID_ARGUMENT", "'dense'"),
    ],
)
def test_bad_input_is_refused_with_a_code_and_the_tensor_name(pool, matmul, spoil, code, names):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    candidates, context = make_request(np.random.default_rng(7), 10, 0)
    spoil(candidates, context)
    with pytest.raises(adrank.CoreError) as error:
        model.submit(candidates, context)
    assert error.value.code == code
    assert error.value.grpc_code == 3
    assert names in str(error.value)
    assert model.stats()["submitted"] == 0


def test_non_contiguous_input_is_accepted_and_scored_correctly(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    candidates, context = make_request(np.random.default_rng(8), 20, 0)
    candidates["dense"] = np.asfortranarray(candidates["dense"])
    result = model.submit(candidates, context).wait(10)
    np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))


def test_queue_full_is_refused_at_once_with_resource_exhausted(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model(
        "gated", matmul.signature(), gate, batching(max_queue_rows=100, max_request_rows=100, max_batch_rows=100)
    )
    rng = np.random.default_rng(9)
    first = model.submit(*make_request(rng, 10, 0))
    assert gate.entered.wait(10)
    queued = [model.submit(*make_request(rng, 50, 100 * i)) for i in range(2)]
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 1, 0))
    assert error.value.code == "RESOURCE_EXHAUSTED"
    assert "max_queue_rows" in str(error.value)
    gate.open.set()
    for pending in [first, *queued]:
        pending.wait(10)
    assert model.stats()["rejected_queue_full"] == 1


def test_deadline_missed_in_queue_is_never_computed(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    rng = np.random.default_rng(10)
    blocker = model.submit(*make_request(rng, 5, 0))
    assert gate.entered.wait(10)
    doomed = model.submit(*make_request(rng, 5, 500), timeout_s=0.05)
    # Answered at its deadline although the model's only instance is still busy.
    with pytest.raises(adrank.CoreError) as error:
        doomed.wait(10)
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert not gate.open.is_set()
    gate.open.set()
    blocker.wait(10)
    assert all(500 not in rows for rows in gate.rows_seen), "an expired request reached the backend"
    assert model.stats()["expired"] == 1

    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 5, 0), timeout_s=0)
    assert error.value.code == "DEADLINE_EXCEEDED"


def test_wait_timeout_raises_timeout_error_and_the_request_still_completes(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    pending = model.submit(*make_request(np.random.default_rng(11), 5, 0))
    with pytest.raises(TimeoutError):
        pending.wait(0.05)
    assert not pending.done()
    gate.open.set()
    assert pending.wait(10).outputs["score"].shape == (5,)


def test_cancelled_request_never_runs(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    rng = np.random.default_rng(12)
    blocker = model.submit(*make_request(rng, 5, 0))
    assert gate.entered.wait(10)
    cancelled = model.submit(*make_request(rng, 5, 700))
    assert cancelled.cancel() is True
    with pytest.raises(adrank.CoreError) as error:
        cancelled.wait(10)
    assert error.value.code == "CANCELLED"
    gate.open.set()
    blocker.wait(10)
    assert all(700 not in rows for rows in gate.rows_seen)


def test_waiting_releases_the_gil(pool, matmul):
    # The backend (on a worker) needs the GIL while the main thread is blocked in wait():
    # if wait held the GIL this would deadlock and the wait would time out.
    released = threading.Event()

    def backend(batch: adrank.Batch) -> None:
        released.set()
        matmul(batch)

    model = pool.add_model("matmul", matmul.signature(), backend, scheduling_batching())
    model.submit(*make_request(np.random.default_rng(13), 5, 0)).wait(10)
    assert released.is_set()


def test_a_worker_keeps_its_python_thread_state_between_batches(matmul):
    # threading.local lives in the thread state: a worker that made a new state per batch (what acquiring
    # the GIL on a thread Python did not start does by default) would see an empty local every batch.
    local = threading.local()
    counts: list[int] = []

    def backend(batch: adrank.Batch) -> None:
        local.count = getattr(local, "count", 0) + 1
        counts.append(local.count)
        matmul(batch)

    options = adrank.MemoryPoolOptions()
    options.use_cuda = False
    one_worker = adrank.ThreadPool(num_workers=1, memory_pool=adrank.MemoryPool(options))
    try:
        model = one_worker.add_model("matmul", matmul.signature(), backend, scheduling_batching())
        for seed in range(3):
            model.submit(*make_request(np.random.default_rng(seed), 4, 0)).wait(10)
    finally:
        one_worker.shutdown()
    assert counts == [1, 2, 3]


def test_dropping_a_pending_request_keeps_its_inputs_alive_until_done(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    rng = np.random.default_rng(14)
    threading.Timer(0.1, gate.open.set).start()
    for i in range(5):
        model.submit(*make_request(rng, 20, 100 * i))  # dropped at once: the binding must wait
    assert model.stats()["completed_ok"] == 5


def test_per_request_context_layout_gives_a_row_index(pool, matmul):
    def backend(batch: adrank.Batch) -> None:
        index = batch.row_request_index
        assert index is not None and index.shape == (batch.rows,)
        assert batch.inputs["user"].shape == (batch.num_requests, USER)
        user_rows = batch.inputs["user"][index]
        batch.outputs["score"][:] = (batch.inputs["dense"] @ matmul.w + user_rows @ matmul.v)[:, 0]
        batch.outputs["row_id_out"][:] = batch.inputs["row_id"]

    options = batching(context_layout=adrank.ContextLayout.PER_REQUEST, max_queue_delay_us=20_000, idle_dispatch=False)
    model = pool.add_model("tower", matmul.signature(), backend, options)
    rng = np.random.default_rng(15)
    requests = [make_request(rng, 10 + i, 1000 * i) for i in range(4)]
    pendings = [model.submit(c, x) for c, x in requests]
    for (candidates, context), pending in zip(requests, pendings, strict=True):
        result = pending.wait(10)
        np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
    assert model.stats()["batches"] < 4, "the four requests should share a batch"


def test_shutdown_finishes_accepted_requests_and_refuses_new_ones(matmul):
    pool = adrank.ThreadPool(num_workers=1)
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    rng = np.random.default_rng(16)
    pendings = [model.submit(*make_request(rng, 5, 10 * i)) for i in range(6)]
    assert gate.entered.wait(10)
    threading.Timer(0.1, gate.open.set).start()
    pool.shutdown()
    for pending in pendings:
        assert pending.done()
        pending.result()
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 5, 0))
    assert error.value.code == "UNAVAILABLE"


def test_remove_model_drains_and_refuses(pool, matmul):
    model = pool.add_model("old", matmul.signature(), matmul, scheduling_batching())
    other = pool.add_model("other", matmul.signature(), matmul, scheduling_batching())
    rng = np.random.default_rng(17)
    pending = model.submit(*make_request(rng, 5, 0))
    pool.remove_model(model)
    pending.wait(10)
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 5, 0))
    assert error.value.code == "UNAVAILABLE"
    assert other.submit(*make_request(rng, 5, 0)).wait(10).batch_rows == 5


def test_memory_pool_cap_fails_only_the_batch_that_does_not_fit(matmul):
    options = adrank.MemoryPoolOptions()
    options.max_bytes = 64 * 1024
    options.use_cuda = False
    memory = adrank.MemoryPool(options)
    pool = adrank.ThreadPool(num_workers=1, memory_pool=memory)
    try:
        model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
        rng = np.random.default_rng(18)
        with pytest.raises(adrank.CoreError) as error:
            model.submit(*make_request(rng, 2000, 0)).wait(10)  # 2000 x 104 B of dense alone
        assert error.value.code == "RESOURCE_EXHAUSTED"
        assert model.submit(*make_request(rng, 20, 0)).wait(10).batch_rows == 20
        stats = memory.stats()
        assert stats["cap_rejections"] >= 1
        assert stats["total_bytes"] <= options.max_bytes
    finally:
        pool.shutdown()


def test_memory_pool_reports_its_allocator_and_locking(pool):
    stats = pool.memory_pool.stats()
    assert stats["allocator"] in {"mlock", "cuda_host"}
    assert set(stats) >= {"total_bytes", "in_use_bytes", "locked_bytes", "locked", "leases", "misses"}


def test_invalid_configuration_is_refused(pool, matmul):
    with pytest.raises(adrank.CoreError, match="preferred_batch_rows"):
        pool.add_model("m", matmul.signature(), matmul, batching(max_batch_rows=64, preferred_batch_rows=[128]))
    with pytest.raises(adrank.CoreError, match="appears twice"):
        adrank.ModelSignature(
            inputs=[adrank.TensorSpec("a", "float32"), adrank.TensorSpec("a", "float32")],
            outputs=[adrank.TensorSpec("y", "float32")],
        )
    with pytest.raises(ValueError, match="unknown dtype"):
        adrank.TensorSpec("a", "float128")
    pool.add_model("m", matmul.signature(), matmul, scheduling_batching())
    with pytest.raises(adrank.CoreError, match="already registered"):
        pool.add_model("m", matmul.signature(), matmul, scheduling_batching())


class ReadOnlyMapping(Mapping):
    """A Mapping that is not a dict: what a caller may hand to submit according to the stub."""

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getitem__(self, key: str) -> np.ndarray:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_any_mapping_is_accepted_for_candidates_and_context(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    candidates, context = make_request(np.random.default_rng(19), 20, 40)
    for wrap in (types.MappingProxyType, ReadOnlyMapping):
        result = model.submit(wrap(candidates), wrap(context)).wait(10)
        np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
        np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])
    with pytest.raises(adrank.CoreError) as error:
        model.submit(list(candidates.items()), context)  # type: ignore[arg-type]
    assert error.value.code == "INVALID_ARGUMENT"
    assert "candidates must be a mapping" in str(error.value)


@pytest.mark.parametrize("timeout_s", [math.inf, 1e300, 2.0**63, 4e7, 3600.0])
def test_infinite_or_huge_timeout_means_no_deadline(pool, matmul, timeout_s):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    candidates, context = make_request(np.random.default_rng(20), 5, 0)
    result = model.submit(candidates, context, timeout_s=timeout_s).wait(10)
    np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])
    stats = model.stats()
    assert (stats["completed_ok"], stats["rejected_expired"], stats["expired"], stats["late"]) == (1, 0, 0, 0)


@pytest.mark.parametrize("timeout_s", [0.0, -0.0, -1.0, -1e300, -math.inf])
def test_timeout_not_above_zero_has_already_passed_at_submit(pool, matmul, timeout_s):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(np.random.default_rng(21), 5, 0), timeout_s=timeout_s)
    assert error.value.code == "DEADLINE_EXCEEDED"
    assert model.stats()["rejected_expired"] == 1


def test_nan_timeout_is_refused_naming_timeout_s(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())
    rng = np.random.default_rng(22)
    with pytest.raises(adrank.CoreError) as error:
        model.submit(*make_request(rng, 5, 0), timeout_s=math.nan)
    assert error.value.code == "INVALID_ARGUMENT"
    assert "timeout_s" in str(error.value)
    assert model.stats()["submitted"] == 0
    pending = model.submit(*make_request(rng, 5, 0))
    with pytest.raises(adrank.CoreError) as error:
        pending.wait(math.nan)
    assert error.value.code == "INVALID_ARGUMENT"
    assert "timeout_s" in str(error.value)
    assert pending.wait(10).batch_rows == 5


def test_wait_timeouts_from_zero_to_infinite(pool, matmul):
    gate = Gate(matmul)
    model = pool.add_model("gated", matmul.signature(), gate, scheduling_batching())
    pending = model.submit(*make_request(np.random.default_rng(23), 5, 0))
    assert gate.entered.wait(10)
    for already_passed in (0.0, -0.0, -math.inf):
        with pytest.raises(TimeoutError):
            pending.wait(already_passed)
    threading.Timer(0.05, gate.open.set).start()
    assert pending.wait(math.inf).batch_rows == 5  # blocks until done instead of timing out at once
    assert pending.wait(1e300).batch_rows == 5


# Run in a child process: page-locking must fail, which takes RLIMIT_MEMLOCK 0 and, for root, giving
# up CAP_IPC_LOCK (it bypasses the limit) by becoming nobody, as memory_pool_test.cc does.
MLOCK_FAILURE_CHILD = textwrap.dedent(
    """
    import json, logging, os, resource
    import numpy as np
    import adrank

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append([record.name, record.levelname, record.getMessage()])

    logging.getLogger("adrank.core").addHandler(Collect())
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except PermissionError as error:
            print(json.dumps({"skip": f"cannot give up root to make mlock fail: {error}"}))
            raise SystemExit(0)
    pool = adrank.ThreadPool(num_workers=1)  # no memory_pool: the binding makes the default one
    signature = adrank.ModelSignature([adrank.TensorSpec("x", "float32")], [adrank.TensorSpec("y", "float32")])
    model = pool.add_model("m", signature, lambda batch: None)
    for rows in (10, 3000):  # two size classes: two blocks fail to lock, one warning
        model.submit({"x": np.zeros(rows, np.float32)}).wait(30)
    stats = pool.memory_pool.stats()
    pool.shutdown()
    print(json.dumps({"stats": stats, "records": records}))
    """
)


def test_default_memory_pool_warns_once_on_the_adrank_core_logger_when_mlock_fails():
    child = subprocess.run(
        [sys.executable, "-c", MLOCK_FAILURE_CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    stats = report["stats"]
    if stats["allocator"] == "cuda_host":
        pytest.skip("cudaHostAlloc pins the blocks here: mlock is never tried")
    if stats["lock_failures"] == 0 and os.geteuid() != 0:
        pytest.skip("mlock succeeds here despite RLIMIT_MEMLOCK 0 (CAP_IPC_LOCK?)")
    assert stats["allocator"] == "mlock"
    assert stats["locked"] is False
    assert stats["locked_bytes"] == 0
    assert stats["lock_failures"] >= 2
    assert len(report["records"]) == 1, report["records"]
    name, level, message = report["records"][0]
    assert (name, level) == ("adrank.core", "WARNING")
    assert "page-locking failed" in message and "RLIMIT_MEMLOCK" in message
    assert "page-locking failed" not in child.stderr, "the warning went to stderr instead of the logger"


def test_submit_releases_the_gil_while_the_core_queues(pool):
    # A thread waiting for the GIL runs, with a switch interval of 1000 s, only when the main thread
    # gives the GIL up itself. The main thread does nothing but submit, so the other thread can only
    # run inside submit's GIL-free part, and a submit that kept the GIL would leave it waiting until
    # the loop below gives up. The wide signature makes that part (the core checking every tensor)
    # last long enough for a waiting thread to be scheduled in it.
    width = 4000
    names = [f"x{i}" for i in range(width)]
    signature = adrank.ModelSignature(
        [adrank.TensorSpec(n, "float32") for n in names], [adrank.TensorSpec("y", "float32")]
    )
    # No batch closes during the loop (not full, no idle dispatch, a long delay): no backend wants the GIL.
    model = pool.add_model(
        "wide", signature, lambda batch: None, batching(idle_dispatch=False, max_queue_delay_us=60_000_000)
    )
    candidates = {n: np.zeros(1, np.float32) for n in names}
    go, ran = threading.Event(), threading.Event()

    def other() -> None:
        go.wait()
        ran.set()

    thread = threading.Thread(target=other)
    thread.start()
    pendings = []  # kept: dropping one still queued would wait, giving the GIL up outside submit
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1000)
    try:
        go.set()
        give_up = time.monotonic() + 5
        while not ran.is_set() and time.monotonic() < give_up:
            pendings.append(model.submit(candidates))
        ran_inside_submit = ran.is_set()  # before anything else gives the GIL up
    finally:
        sys.setswitchinterval(switch_interval)
        go.set()
    thread.join(10)
    assert ran_inside_submit, f"no other thread ran during {len(pendings)} submits: submit holds the GIL"
    pool.remove_model(model)  # flushes what is queued
    for pending in pendings:
        assert pending.wait(10).outputs["y"].shape == (1,)


def test_the_type_stubs_name_everything_the_core_exports() -> None:
    """python/adrank/_core.pyi is what the type checker (make lint) knows of the core: a name missing there is
    a name every caller's use of goes unchecked."""
    import re
    from pathlib import Path

    stubs = (Path(__file__).resolve().parents[2] / "python" / "adrank" / "_core.pyi").read_text()
    declared = set(re.findall(r"^(?:class|def) (\w+)|^(\w+):", stubs, re.M))
    names = {a or b for a, b in declared}
    exported = {name for name in dir(adrank._core) if not name.startswith("__")}
    assert exported - names == set()
