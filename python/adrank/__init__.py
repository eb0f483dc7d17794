"""adrank: an online inference server for ads ranking.

The C++ core (`adrank._core`) batches requests, leases pinned buffers and schedules model runs
without the GIL; this package re-exports its public names.

The names are resolved on first use (PEP 562 `__getattr__`), not when the package is imported: every
`adrank.*` module imports this package first, and the admin commands (`adrank models --server ...`) must
start in a fraction of a second, without loading the core, numpy and asyncio they never use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adrank.lazy_names import lazy_names

if TYPE_CHECKING:
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

# Each public name and the module that defines it.
_HOMES = {
    **dict.fromkeys(
        (
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
        ),
        "adrank._core",
    ),
    "AsyncCompletions": "adrank.completions",
}

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


__getattr__ = lazy_names(__name__, _HOMES)
