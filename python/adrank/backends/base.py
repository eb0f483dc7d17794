"""The backend interface: load a model version directory with its config, get a Session, run batches.

A backend knows nothing of gRPC or of the batcher's policy. The core's worker threads call
`Session.run(batch)` with numpy views over the batch's pooled buffers (inputs gathered, outputs to be
filled in place) and the GIL held only for the call; a backend that computes outside Python (ONNX
Runtime, TensorRT) releases it while the model runs.

Contract:
- `Backend.load` checks the graph against the config's signature and raises BackendError naming the
  tensor that disagrees; a version that loads is one that can run every batch the core forms.
- One Session serves one model instance: the core never runs two batches on the same instance at once,
  so a Session needs no lock of its own; different instances run concurrently.
- `run` writes every row of `batch.outputs`; an exception fails exactly that batch (its requests get
  INTERNAL) and the model keeps serving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

import adrank._core as core
from adrank.repository.config import ModelConfig

# The graph input that receives, per candidate row, the index of its request in the batch (the
# per_request context layout): a model that runs a context tower once per request gathers with it.
ROW_REQUEST_INDEX = "row_request_index"
MODEL_FILE = "model.onnx"
# Scores of an fp32 GPU session against the CPU's golden ones (other kernels, other summation order):
# ~1e-6 on an MLP; 1e-4 leaves room for deeper graphs without letting a different model through.
GPU_FP32_ATOL = 1e-4
# TF32 or fp16 arithmetic keeps 10 mantissa bits: ~1e-3 relative.
GPU_REDUCED_ATOL = 1e-2


class BackendError(RuntimeError):
    """A model version that cannot be loaded or run; the message names the file or tensor."""


class Session(ABC):
    """One loaded instance of a model version."""

    @abstractmethod
    def run(self, batch: core.Batch) -> None:
        """Runs the model on a batch formed by the core, writing `batch.outputs` in place."""

    @abstractmethod
    def run_arrays(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the graph on plain arrays (warm-up, parity checks, offline tools); returns every output."""

    @property
    def parity_atol(self) -> float | None:
        """How far this session's scores may lie from golden outputs computed on the CPU, when its arithmetic
        differs (a GPU's kernels, TF32, fp16); None when it computes as the CPU does."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook: most sessions free everything when dropped
        """Releases what the session holds beyond its Python references."""


class Backend(ABC):
    @property
    def context_cache(self) -> core.ContextCache | None:
        """The version's context-tower cache (cpp/context_cache.h), once an instance is loaded; None when the
        model declares no context tower or turns its cache off."""
        return None

    @abstractmethod
    def load(self, version_dir: Path, config: ModelConfig, instance: int) -> Session:
        """Loads `version_dir/model.onnx` (or the backend's artifact) as instance `instance`."""
