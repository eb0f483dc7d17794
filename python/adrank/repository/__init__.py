"""The model repository: its layout on disk, the typed schema of its files (config.yaml, meta.json) and a
version's atomic staging into it (DESIGN.md, Model repository). It depends on nothing above it: the
version lifecycle (adrank.lifecycle) and publishing (adrank.publish) build on it."""

from adrank.repository.config import ConfigError, ModelConfig, load_model_config
from adrank.repository.layout import ModelEntry, ModelRepository

__all__ = ["ConfigError", "ModelConfig", "ModelEntry", "ModelRepository", "load_model_config"]
