"""adrank: an online inference server for ads ranking.

The C++ core (`adrank._core`) batches requests, leases pinned buffers and schedules model runs
without the GIL; this package re-exports its public names.
"""

from adrank._core import (
    Batch,
    BatcherOptions,
    CompletionQueue,
    ContextLayout,
    CoreError,
    MemoryPool,
    MemoryPoolOptions,
    Model,
    ModelSignature,
    PendingRequest,
    Result,
    Role,
    TensorSpec,
    ThreadPool,
)
from adrank.completions import AsyncCompletions

__version__ = "0.1.0"

__all__ = [
    "AsyncCompletions",
    "Batch",
    "BatcherOptions",
    "CompletionQueue",
    "ContextLayout",
    "CoreError",
    "MemoryPool",
    "MemoryPoolOptions",
    "Model",
    "ModelSignature",
    "PendingRequest",
    "Result",
    "Role",
    "TensorSpec",
    "ThreadPool",
    "__version__",
]
