"""VersionMeta: the typed schema of a version's `meta.json`, and its golden requests.

`meta.json` sits beside `model.onnx` and is written once, by training/export scripts or by
`adrank publish`, before the version folder becomes visible. The server reads two things from it:
- `sha256` of `model.onnx`: a file that does not hash to it is corrupt and never loaded;
- `golden`: inputs and the outputs this version gave for them. Loading a version replays them through
  the core exactly as requests are served (batcher, backend, tokenizer) and refuses the version unless
  every output is within `atol` (the parity check; `atol_reason` says why the tolerance is what it is).
It also shows `integer_kernels`, publish's record of the model's integer nodes that can saturate on CPUs
without VNNI (its count, and whether `--allow-int8-saturation` let them through), in `adrank models` and a
parity failure's reason. Everything else (training data, metrics, publish figures) is provenance for people;
unknown fields are kept, never refused.

Golden inputs are one or more requests. A candidate input holds all requests' rows, concatenated; a
context input holds one value per request; `request_rows` (among the inputs, as the bundled relevance
model has it) gives each request's N, and without it there is one request. Outputs hold every row, in
the same order. Keys that are not an input of the model (an ad's text kept for people) are ignored.

Contract: pure functions over files; `load_meta` raises MetaError naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adrank.repository.config import ModelConfig

META_FILE = "meta.json"
REQUEST_ROWS = "request_rows"


class MetaError(ValueError):
    """A meta.json that cannot be used; the message names the file and the field."""


class Golden(BaseModel):
    model_config = ConfigDict(extra="allow")

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    # How far a correct CPU's scores may be from these (the parity check's tolerance). fp32 kernels differ by a
    # few ulps between CPU kinds (AVX2, AVX-512: ~1e-7 on a score); integer kernels must not differ at all, but
    # the fp32 ops around them can move a dynamically quantised activation by one step. The default, 1e-5,
    # absorbs fp32 differences without letting a different model through; a model that needs more says so in
    # `atol_reason` (the bundled models state theirs, with the figures they rest on).
    atol: float = Field(1e-5, gt=0)
    atol_reason: str | None = None


class IntegerKernels(BaseModel):
    """What `adrank publish` found of the model's integer MatMul/Conv nodes (repository/integer_kernels.py):
    how many can saturate on CPUs without VNNI, and whether it was published anyway."""

    model_config = ConfigDict(extra="allow")

    integer_nodes: int | None = Field(None, ge=0)
    saturation_risk: int = Field(ge=0)  # nodes that can saturate
    allowed: bool = False  # published anyway: `adrank publish --allow-int8-saturation`
    by: str | None = None  # who allowed it (the command)
    nodes: list[str] = Field(default_factory=list)  # the first few, described

    def note(self) -> str:
        """One line for `adrank models`: empty when no node can saturate."""
        if not self.saturation_risk:
            return ""
        nodes = f"{self.saturation_risk} int8 node{'s' if self.saturation_risk > 1 else ''}"
        allowed = f" (allowed by {self.by})" if self.allowed and self.by else " (allowed)" if self.allowed else ""
        return f"{nodes} can saturate without VNNI{allowed}"


class VersionMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    golden: Golden
    integer_kernels: IntegerKernels | None = None  # absent: published before publish recorded it


GoldenRequest = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (candidates, context)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_meta(path: Path) -> VersionMeta:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MetaError(f"{path}: cannot read: {error}") from error
    try:
        return VersionMeta.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise MetaError(f"{path}: {problems}") from error


def integer_kernels_note(version_dir: Path) -> str:
    """The version's meta.json `integer_kernels` note (IntegerKernels.note); empty when it records none or
    cannot be read (the load reports an unreadable meta.json)."""
    try:
        recorded = load_meta(version_dir / META_FILE).integer_kernels
    except MetaError:
        return ""
    return "" if recorded is None else recorded.note()


def golden_requests(config: ModelConfig, inputs: dict[str, Any]) -> list[GoldenRequest]:
    """The golden inputs as requests of the model's signature (strings stay Python objects)."""
    missing = [t.name for t in config.inputs if t.name not in inputs]
    if missing:
        raise MetaError(f"golden inputs: no '{missing[0]}' (model '{config.name}' takes it)")
    candidate = [t for t in config.inputs if t.role == "candidate"]
    total = len(inputs[candidate[0].name])
    rows = [int(n) for n in inputs.get(REQUEST_ROWS, [total])]
    if sum(rows) != total or any(n < 1 for n in rows):
        raise MetaError(f"golden inputs: request_rows {rows} do not add up to the {total} candidate rows")
    requests: list[GoldenRequest] = []
    start = 0
    for i, n in enumerate(rows):
        candidates: dict[str, np.ndarray] = {}
        context: dict[str, np.ndarray] = {}
        for t in config.inputs:
            if t.role == "candidate":
                value = np.asarray(inputs[t.name][start : start + n], dtype=t.dtype).reshape([n, *t.shape])
                candidates[t.name] = value
            elif t.dtype == "string":
                context[t.name] = np.array([_per_request(inputs[t.name], i, len(rows), t.name)], dtype=object)
            else:
                value = _per_request(inputs[t.name], i, len(rows), t.name)
                context[t.name] = np.asarray(value, dtype=t.dtype).reshape([1, *t.shape])
        requests.append((candidates, context))
        start += n
    return requests


def _per_request(values: Any, index: int, requests: int, name: str) -> Any:
    if not isinstance(values, list) or len(values) != requests:
        raise MetaError(f"golden inputs: context '{name}' needs one value per request ({requests})")
    return values[index]


def golden_outputs(config: ModelConfig, outputs: dict[str, Any]) -> np.ndarray:
    """The score output's golden rows, float32 [total rows]."""
    name = config.score_output
    if name not in outputs:
        raise MetaError(f"golden outputs: no '{name}' (model '{config.name}''s score output)")
    return np.asarray(outputs[name], dtype=np.float32).reshape(-1)
