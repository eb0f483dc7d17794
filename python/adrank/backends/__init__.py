"""Backends: load a model version with its config, then run batches on it (see base.py)."""

from adrank.backends.base import Backend, BackendError, Session
from adrank.backends.onnxruntime import OnnxRuntimeBackend
from adrank.backends.tensorrt import TensorRtBackend

__all__ = ["Backend", "BackendError", "OnnxRuntimeBackend", "Session", "TensorRtBackend", "create_backend"]


def create_backend(backend: str) -> Backend:
    """The backend a config's `backend` names; a new one per version loaded (it may share state, such as a
    TensorRT engine, among that version's instances)."""
    if backend == "onnxruntime":
        return OnnxRuntimeBackend()
    if backend == "tensorrt":
        return TensorRtBackend()
    raise BackendError(f"backend '{backend}' does not exist (onnxruntime, tensorrt)")
