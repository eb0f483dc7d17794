"""ModelRepository: the models and versions in a repository directory, as the files say.

Layout (DESIGN.md, Model repository):
    <root>/<name>/config.yaml            the model's signature, backend, batching, instances
    <root>/<name>/<version>/model.onnx   immutable once published; <version> a positive integer
    <root>/<name>/<version>/meta.json    sha256, training metrics, golden inputs/outputs

A folder is a model when its name is a model name (config.py: `check_model_name`) and it holds a
config.yaml; a version is a folder named by a positive integer. Anything else (a publish's temporary
folder, a README, a hidden folder) is ignored, so a version becomes visible only by the atomic rename that
completes its publish. Scanning reads configs and lists folders: it loads nothing.

A repository that cannot be listed (missing, not a folder, no permission) raises RepositoryError rather
than looking empty: a server must tell "every model was removed" from "the mount went away" (manager.py
keeps serving through the second).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adrank.repository.config import (
    ConfigError,
    ModelConfig,
    ModelNameError,
    check_model_name,
    is_model_name,
    load_model_config,
)

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    config: ModelConfig
    versions: tuple[int, ...]  # ascending

    def version_dir(self, version: int) -> Path:
        return self.path / str(version)


class RepositoryError(OSError):
    """The repository's folder cannot be listed; the message names it and the system's reason."""


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        """The models in the repository; RepositoryError if it cannot be listed."""
        try:
            return sorted(p.name for p in self.root.iterdir() if is_model_name(p.name) and (p / CONFIG_FILE).is_file())
        except OSError as error:
            raise RepositoryError(f"repository {self.root}: cannot read it: {error.strerror or error}") from error

    def entry(self, name: str) -> ModelEntry:
        """The model's config and versions; ConfigError if its name or its config.yaml is bad."""
        try:
            check_model_name(name)
        except ModelNameError as error:
            raise ConfigError(f"model {error}") from error
        path = self.root / name
        config = load_model_config(path / CONFIG_FILE)
        versions = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
        return ModelEntry(name, path, config, tuple(versions))

    def entries(self) -> list[ModelEntry]:
        return [self.entry(name) for name in self.model_names()]
