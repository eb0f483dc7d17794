"""The model repository: its layout on disk, the typed schema of its files, and the lifecycle of the
versions a server loads from it (DESIGN.md, Model repository)."""

from adrank.repository.config import ConfigError, ModelConfig, load_model_config
from adrank.repository.layout import ModelEntry, ModelRepository

__all__ = ["ConfigError", "ModelConfig", "ModelEntry", "ModelRepository", "load_model_config"]
