"""Type stubs for adrank._core, the C++ core (see cpp/*.h for the contracts)."""

import enum
from collections.abc import Callable, Mapping, Sequence

import numpy as np

class CoreError(RuntimeError):
    code: str  # the gRPC status name, e.g. "RESOURCE_EXHAUSTED"
    grpc_code: int

class Role(enum.Enum):
    CANDIDATE = ...
    CONTEXT = ...

class ContextLayout(enum.Enum):
    BROADCAST = ...
    PER_REQUEST = ...

class TensorSpec:
    def __init__(self, name: str, dtype: str, row_shape: Sequence[int] = ..., role: Role = ...) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def row_shape(self) -> list[int]: ...
    @property
    def role(self) -> Role: ...

class ModelSignature:
    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None: ...
    @property
    def inputs(self) -> list[TensorSpec]: ...
    @property
    def outputs(self) -> list[TensorSpec]: ...

DEFAULT_PRIORITY: int  # a request's priority when it asks for none: the model's default class
DEFAULT_TENANT: str  # the tenant of a request that names none

class TenantPolicy:
    weight: float
    max_queued_rows: int
    max_in_flight: int
    highest_priority: int  # -1: no class above the model's default
    def __init__(self) -> None: ...

class TenantOptions:
    defaults: TenantPolicy
    tenants: dict[str, TenantPolicy]
    max_tenants: int
    def __init__(self) -> None: ...
    def validate(self) -> None:
        """CoreError INVALID_ARGUMENT naming the tenant and field that is wrong."""

class BatcherOptions:
    max_batch_rows: int
    preferred_batch_rows: list[int]
    max_queue_delay_us: int
    max_queue_rows: int
    max_request_rows: int
    max_batch_requests: int
    priority_levels: int
    default_priority: int
    max_predicted_wait_us: int
    default_deadline_us: int
    adaptive_lifo_us: int
    tenants: TenantOptions
    idle_dispatch: bool
    pad_to_preferred: bool
    context_layout: ContextLayout
    def __init__(self) -> None: ...

class MemoryPoolOptions:
    max_bytes: int
    min_block_bytes: int
    lock_memory: bool
    use_cuda: bool
    def __init__(self) -> None: ...

class MemoryPool:
    def __init__(self, options: MemoryPoolOptions = ...) -> None: ...
    def stats(self) -> dict[str, int | bool | str]: ...
    def trim(self) -> None: ...

class CompletionQueue:
    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> list[int]: ...

class Result:
    @property
    def outputs(self) -> dict[str, np.ndarray]: ...
    @property
    def queue_us(self) -> int: ...
    @property
    def compute_us(self) -> int: ...
    @property
    def batch_rows(self) -> int: ...
    @property
    def batches(self) -> int: ...

class Batch:
    """What a backend receives: views over pooled buffers, valid only during the call."""

    @property
    def inputs(self) -> dict[str, np.ndarray]: ...
    @property
    def outputs(self) -> dict[str, np.ndarray]: ...
    @property
    def row_request_index(self) -> np.ndarray | None: ...
    @property
    def rows(self) -> int: ...
    @property
    def real_rows(self) -> int: ...
    @property
    def num_requests(self) -> int: ...
    @property
    def instance(self) -> int: ...

class PendingRequest:
    def wait(self, timeout_s: float | None = None) -> Result:
        """Blocks without the GIL until done; TimeoutError after `timeout_s` (<= 0: do not wait; None,
        +inf or beyond a year: no limit; NaN: CoreError INVALID_ARGUMENT). Raises CoreError on failure."""
    def result(self) -> Result: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...
    @property
    def token(self) -> int: ...

class Model:
    @property
    def name(self) -> str: ...
    @property
    def instances(self) -> int: ...
    def submit(
        self,
        candidates: Mapping[str, np.ndarray],
        context: Mapping[str, np.ndarray] | None = None,
        *,
        timeout_s: float | None = None,
        priority: int = ...,
        tenant: str = "",
        completion_queue: CompletionQueue | None = None,
        token: int = 0,
    ) -> PendingRequest:
        """Queues one request. `candidates`/`context`: any Mapping of name -> array. `timeout_s` sets the
        deadline: <= 0 is already passed (CoreError DEADLINE_EXCEEDED); None, +inf or beyond a year is the
        model's default deadline; NaN is CoreError INVALID_ARGUMENT. `priority`: DEFAULT_PRIORITY is the
        model's default class. `tenant`: "" is DEFAULT_TENANT. Refusals raise CoreError at once."""
    def stats(self) -> dict[str, int]: ...
    def tenant_stats(self) -> list[dict[str, int | str]]:
        """Per tenant the model has seen: queued rows/requests, in flight, and its outcome counters."""
    def predict_execution_us(self, rows: int) -> int: ...

Backend = Callable[[Batch], Mapping[str, np.ndarray] | Sequence[np.ndarray] | None]

class ThreadPool:
    def __init__(self, num_workers: int = 0, memory_pool: MemoryPool | None = None) -> None: ...
    def add_model(
        self,
        name: str,
        signature: ModelSignature,
        backend: Backend,
        batching: BatcherOptions = ...,
        instances: int = 1,
    ) -> Model: ...
    def remove_model(self, model: Model) -> None: ...
    def shutdown(self) -> None: ...
    @property
    def num_workers(self) -> int: ...
    @property
    def memory_pool(self) -> MemoryPool: ...

# CUDA, from the runtime found at run time (cpp/cuda_runtime.h). Without a device, the constructors and
# the device queries raise CoreError UNAVAILABLE whose message says why.
def cuda_probe() -> dict[str, bool | int | str]: ...
def cuda_device_name(device: int) -> str: ...
def cuda_compute_capability(device: int) -> tuple[int, int]: ...

class DeviceBuffer:
    def __init__(self, device: int, bytes: int) -> None: ...
    @property
    def ptr(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def device(self) -> int: ...

class CudaStream:
    def __init__(self, device: int) -> None: ...
    @property
    def handle(self) -> int: ...
    @property
    def device(self) -> int: ...
    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, offset: int = 0) -> None: ...
    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, offset: int = 0) -> None: ...
    def synchronize(self) -> None: ...

class _OutputBuffer:
    """A batch's output buffer handed to a backend (opaque: Batch's methods fill it)."""

BATCH_ROWS_BOUNDS: list[int]  # the batch-rows histogram's bucket bounds (cpp/version_stats.h)
HAS_RANK_SERVER: bool  # whether this build has the C++ gRPC front end (grpc++ was found)
SHADOW_SALT: int  # the salt of the shadow's routing buckets (cpp/model_registry.h)

def routing_bucket(key: str, salt: int = 0) -> int: ...

class ServedInput:
    def __init__(
        self,
        name: str,
        dtype: str,
        row_shape: Sequence[int] = ...,
        role: Role = ...,
        allow_nonfinite: bool = True,
        text_bytes: int = 0,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def text_bytes(self) -> int: ...

class VersionStats:
    def __init__(self, score_low: float = 0.0, score_high: float = 1.0, score_bins: int = 1000) -> None: ...
    enabled: bool
    record_scores: bool
    def snapshot(self) -> dict[str, object]: ...
    @property
    def score_low(self) -> float: ...
    @property
    def score_high(self) -> float: ...
    @property
    def score_bins(self) -> int: ...
    latency_bounds_us: list[int]

class ServedModel:
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def model(self) -> Model: ...
    @property
    def lowest_priority(self) -> int: ...
    @property
    def platform(self) -> str: ...
    @property
    def stats(self) -> VersionStats: ...

class RolloutRoute:
    def __init__(
        self,
        stable: int,
        canary: int = 0,
        canary_basis_points: int = 0,
        shadow: int = 0,
        shadow_basis_points: int = 10000,
    ) -> None: ...
    @property
    def stable(self) -> int: ...
    @property
    def canary(self) -> int: ...
    @property
    def canary_basis_points(self) -> int: ...
    @property
    def shadow(self) -> int: ...
    @property
    def shadow_basis_points(self) -> int: ...

class VersionRelease:
    def wait(self, timeout_s: float) -> bool: ...
    @property
    def released(self) -> bool: ...

class ModelRegistry:
    def __init__(self) -> None: ...
    def add(
        self,
        model: Model,
        name: str,
        version: int,
        inputs: Sequence[ServedInput],
        score_output: str,
        max_candidates: int,
        lowest_priority: int,
        stats: VersionStats,
        serving: bool = False,
        platform: str = "",
    ) -> None: ...
    def remove(self, name: str, version: int) -> VersionRelease: ...
    def set_rollout(self, name: str, route: RolloutRoute) -> None: ...
    def rollout(self, name: str) -> RolloutRoute: ...  # stable 0 for a model never added
    def versions(self, name: str) -> list[int]: ...  # ascending; empty for a model it does not know
    def models(self) -> list[str]: ...
    def route(self, name: str, version: int = 0, key: str = "") -> tuple[ServedModel, ServedModel | None]: ...
    @property
    def max_request_bytes(self) -> int: ...
    @property
    def unknown_model_requests(self) -> int: ...  # requests naming a model it does not serve

# The Rank contract (cpp/rank_call.h): what both front ends hand a call to.
class PendingRank:
    def done(self) -> bool: ...
    def wait(self, timeout_s: float | None = None) -> bool: ...  # False if the timeout passed first
    def result(self) -> bytes: ...  # the serialized RankResponse; CoreError with the call's status
    def cancel(self) -> None: ...
    @property
    def token(self) -> int: ...

def start_rank(
    registry: ModelRegistry,
    request: bytes,
    *,
    timeout_s: float | None = None,
    reply_margin_s: float = 0.0,
    tenant: str = "",
    completion_queue: CompletionQueue | None = None,
    token: int = 0,
) -> PendingRank: ...

# One KServe v2 ModelInfer call over an inference.ModelInferRequest's bytes (cpp/infer_call.h); the answer's
# bytes are a serialized ModelInferResponse.
def start_infer(
    registry: ModelRegistry,
    request: bytes,
    *,
    timeout_s: float | None = None,
    reply_margin_s: float = 0.0,
    tenant: str = "",
    completion_queue: CompletionQueue | None = None,
    token: int = 0,
) -> PendingRank: ...

# KServe v2's describing answers (cpp/infer_metadata.h), serialized messages in and out.
def infer_model_ready(registry: ModelRegistry, serving: bool, request: bytes) -> bytes: ...
def infer_model_metadata(registry: ModelRegistry, request: bytes) -> bytes: ...  # CoreError NOT_FOUND
def infer_model_config(registry: ModelRegistry, request: bytes) -> bytes: ...  # CoreError NOT_FOUND
def infer_model_statistics(registry: ModelRegistry, request: bytes) -> bytes: ...  # infer_statistics.h; NOT_FOUND
def infer_server_metadata(version: str) -> bytes: ...

# Which calls a server takes (cpp/rank_admission.h).
class RankAdmission:
    def __init__(self, registry: ModelRegistry, max_in_flight_bytes: int = 268435456) -> None: ...
    def admit(self, bytes: int) -> None: ...  # CoreError UNAVAILABLE or RESOURCE_EXHAUSTED
    def call_done(self) -> None: ...
    def release_bytes(self, bytes: int) -> None: ...
    def answered(self, code: int) -> None: ...
    def set_serving(self) -> None: ...
    def start_draining(self) -> None: ...
    @property
    def state(self) -> str: ...  # "loading", "serving" or "draining"
    def wait_drained(self, quiet_s: float, grace_s: float) -> bool: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def in_flight_bytes(self) -> int: ...
    @property
    def released_bytes(self) -> int: ...
    @property
    def max_in_flight_bytes(self) -> int: ...
    def call_counts(self) -> list[int]: ...

class TlsFiles:  # cpp/frontend/tls_credentials.h: cert_file empty is plaintext
    cert_file: str
    key_file: str
    client_ca_file: str
    refresh_s: int
    def __init__(self) -> None: ...

class RankServerOptions:
    host: str
    port: int
    max_message_bytes: int
    max_concurrent_streams: int
    max_in_flight_bytes: int
    keepalive_time_s: float
    keepalive_timeout_s: float
    yield_to_workers: bool
    reply_margin_s: float
    version: str
    tls: TlsFiles
    def __init__(self) -> None: ...

class RankServer:
    def __init__(self, options: RankServerOptions, registry: ModelRegistry) -> None: ...
    # handler(method, request, authorization, done) on a gRPC thread, returning at once;
    # done(code, message, response) answers later, from any thread (cpp/frontend/inference_service.h).
    def set_repository_handler(
        self, handler: Callable[[str, bytes, str, Callable[[int, str, bytes], None]], None]
    ) -> None: ...
    def set_serving(self, serving: bool) -> None: ...
    def set_service_serving(self, service: str, serving: bool) -> None: ...
    def start_draining(self) -> None: ...
    def shutdown(self, grace_s: float = 0.0) -> None: ...
    @property
    def port(self) -> int: ...
    @property
    def admission(self) -> RankAdmission: ...
