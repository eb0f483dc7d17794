"""Backends: load a model version with its config, then run batches on it (see base.py)."""

from adrank.backends.base import Backend, BackendError, Session
from adrank.backends.onnxruntime import OnnxRuntimeBackend

__all__ = ["Backend", "BackendError", "OnnxRuntimeBackend", "Session", "create_backend"]


def create_backend(platform: str) -> Backend:
    """The backend for a config's `platform`."""
    if platform == "onnxruntime":
        return OnnxRuntimeBackend()
    raise BackendError(f"platform '{platform}' has no backend")
