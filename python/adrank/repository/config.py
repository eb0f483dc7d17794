"""ModelConfig: the typed schema of a model's `config.yaml`.

A model folder's `config.yaml` declares the model's signature (its inputs with their roles, dtypes and
per-row shapes, and its score output), the backend that runs it, how its requests are batched, and how
many of its batches may run at once. `load_model_config` parses and validates it in one step: a bad file
is refused with a ConfigError that names the file and the field, and nothing of it is used.

Contract: configs are immutable once loaded (frozen models); loading is pure (reads one file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

import adrank._core as core
from adrank.config_file import read_yaml

# numpy names, as the core and the wire contract spell them. "string" is text: it never reaches the
# core; a tokenizer turns it into integer tensors first.
DType = Literal["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "string"]
FLOAT_DTYPES = ("float16", "float32", "float64")
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
# A model's name is a folder of the repository, a key of the routing table and a health service name, and it
# comes from operators (publish, the admin API): one path component, never "..", no separator, no leading
# dot (hidden folders and a publish's staging folders are not models).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


class ConfigError(ValueError):
    """A config.yaml that cannot be used; the message names the file and the field."""


class ModelNameError(ValueError):
    """A model name that is not one: the message quotes it and states the rule."""


def is_model_name(name: str) -> bool:
    return _MODEL_NAME.fullmatch(name) is not None


def check_model_name(name: str) -> str:
    """The name, if it is a model name; else ModelNameError (every entry point checks with this)."""
    if not is_model_name(name):
        raise ModelNameError(
            f"{name!r} is not a model name: letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    return name


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them rather than ignore them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerConfig(_Strict):
    """How a text input becomes the model's integer inputs (a Hugging Face `tokenizer.json`).

    The text reaches the core as one row of `max_bytes` UTF-8 bytes (zero-padded; a longer text is cut
    at a character boundary), and the backend tokenizes the batch's rows, once per request, padding to
    the batch's longest text.
    """

    file: str = Field(description="tokenizer.json, relative to the version directory")
    # Queries are short: 32 tokens hold all but the rarest.
    max_length: int = Field(32, ge=1, le=512)
    # 32 word pieces are at most a few hundred bytes of text; bytes beyond could never be tokenized.
    max_bytes: int = Field(1024, ge=16, le=65536)
    input_ids: str = Field(pattern=NAME_PATTERN, description="graph input that receives the token ids")
    attention_mask: str = Field(pattern=NAME_PATTERN, description="graph input that receives the mask")


class TensorConfig(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    dtype: DType
    # The shape of one row: the dims after the leading (row) dimension. [] is one value per row.
    shape: list[int] = Field(default_factory=list)
    role: Literal["candidate", "context"] = "candidate"
    # False: NaN and inf are refused with INVALID_ARGUMENT (float inputs only).
    allow_nonfinite: bool = True
    tokenizer: TokenizerConfig | None = None
    # Outputs only: the range every score must fall in (checked on golden outputs when publishing).
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TensorConfig:
        if any(dim < 1 for dim in self.shape):
            raise ValueError(f"shape {self.shape}: every dim must be >= 1")
        if not self.allow_nonfinite and self.dtype not in FLOAT_DTYPES:
            raise ValueError(f"allow_nonfinite applies to float inputs only, not {self.dtype}")
        if self.dtype == "string":
            if self.tokenizer is None:
                raise ValueError("a string input needs a tokenizer")
            if self.role != "context" or self.shape:
                raise ValueError("a string input is one text per request: role context, shape []")
        elif self.tokenizer is not None:
            raise ValueError("tokenizer applies to string inputs only")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {list(self.range)}: low > high")
        return self


class BatchingConfig(_Strict):
    """The core batcher's options (cpp/batcher.h states each default and why)."""

    max_batch_rows: int = Field(1024, ge=1)
    preferred_batch_rows: list[int] = Field(default_factory=list)
    max_queue_delay_us: int = Field(200, ge=0)
    max_queue_rows: int = Field(131072, ge=1)
    # 0: no limit. 1 for a model whose per-request work does not batch (cpp/batcher.h).
    max_batch_requests: int = Field(0, ge=0)
    # The queue's bound in time, the deadline of a request that sets none, and when a standing queue
    # turns newest-first (cpp/batcher.h: Admission, Overload). 0 turns each off.
    max_predicted_wait_us: int = Field(50_000, ge=0)
    default_deadline_us: int = Field(1_000_000, ge=0)
    adaptive_lifo_us: int = Field(2_000, ge=0)
    # A class above the default for the tenants allowed it, the default, and one below for shadow traffic.
    priority_levels: int = Field(3, ge=1, le=16)
    # The class of a request that asks for none; None: 1, or 0 for a model with one class.
    default_priority: int | None = Field(None, ge=0)
    idle_dispatch: bool = True
    pad_to_preferred: bool = False
    context_layout: Literal["broadcast", "per_request"] = "broadcast"

    @model_validator(mode="after")
    def _sizes(self) -> BatchingConfig:
        sizes = self.preferred_batch_rows
        if sizes != sorted(set(sizes)) or any(s < 1 or s > self.max_batch_rows for s in sizes):
            raise ValueError(f"preferred_batch_rows {sizes} must be ascending, distinct and in [1, max_batch_rows]")
        if self.default_priority is not None and self.default_priority >= self.priority_levels:
            raise ValueError(
                f"default_priority {self.default_priority} must be below priority_levels ({self.priority_levels})"
            )
        return self

    @property
    def default_class(self) -> int:
        """The priority class of a request that asks for none."""
        return min(1, self.priority_levels - 1) if self.default_priority is None else self.default_priority

    def warmup_sizes(self) -> list[int]:
        """One warm-up run per size a batch can close at."""
        return list(self.preferred_batch_rows) or [self.max_batch_rows]


class OnnxRuntimeConfig(_Strict):
    # One thread per session: the core runs one batch per worker, so intra-op threads would compete
    # with the other workers for the same cores.
    intra_op_num_threads: int = Field(1, ge=0)
    inter_op_num_threads: int = Field(1, ge=0)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    # None: TensorRT, CUDA, CPU, in that order, as this ONNX Runtime build has them.
    execution_providers: list[str] | None = None
    # Run batches through an IOBinding over the pooled buffers. None: only when the first provider is a
    # device's (there it saves the copies); on the CPU plain runs are cheaper (backends/onnxruntime.py).
    io_binding: bool | None = None
    # CUDA EP only: TF32 matmuls are ~2x faster on Ampere and later but round inputs to 10 mantissa bits,
    # so scores move by ~1e-3 against the CPU's: off unless asked for (then parity allows 1e-2).
    use_tf32: bool = False


class TensorRtConfig(_Strict):
    """TensorRT: the native backend (`backend: tensorrt`) and ONNX Runtime's TensorRT execution provider."""

    # fp16 kernels roughly double throughput and halve memory traffic, but move scores by ~1e-3: only when
    # the config asks. fp32 also keeps TF32 off, so that scores match the CPU's within 1e-4.
    precision: Literal["fp32", "fp16"] = "fp32"
    # Scratch memory the builder's tactics may use; 1 GiB lets every tactic of these small models compete.
    workspace_mb: int = Field(1024, ge=16)
    # TensorRT's default (3): level 5 searches longer (minutes) for a few percent.
    builder_optimization_level: int = Field(3, ge=0, le=5)
    # Keep a built engine beside the model (`<version>/tensorrt/`) so that the next load deserializes it
    # in milliseconds instead of building for seconds to minutes.
    cache: bool = True


class ContextTowerConfig(_Strict):
    """The part of the graph that depends only on the context inputs (backends/context_tower.py): the graph is
    cut at `output` at load, and the output's row for each distinct context is cached (cpp/context_cache.h), so
    that a context seen recently skips the tower and only the per-candidate head runs."""

    output: str = Field(pattern=NAME_PATTERN, description="graph output that only the context inputs feed")
    # 64 MiB: ~40,000 relevance queries (a 1.5 KiB embedding each, with its key): the head of a day's queries.
    # 0: no cache, the whole graph runs as without a tower (the cut is still checked at load).
    cache_bytes: int = Field(64 << 20, ge=0)


class VersionPolicy(_Strict):
    """Which versions of the repository a server loads (TF Serving's policy): exactly one of
    `latest: N` (the N highest), `all: true`, or `specific: [v, ...]`. The versions a model's rollout
    names (stable, canary, shadow) are loaded as well, whatever the policy."""

    latest: int | None = Field(None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.all, self.specific is not None]
        if sum(chosen) > 1:
            raise ValueError("give one of latest, all, specific")
        if self.specific is not None and (not self.specific or any(v < 1 for v in self.specific)):
            raise ValueError(f"specific {self.specific}: a non-empty list of versions >= 1")
        return self

    def select(self, versions: tuple[int, ...]) -> list[int]:
        """The versions to load among those on disk (ascending)."""
        if self.all:
            return list(versions)
        if self.specific is not None:
            return sorted(set(self.specific) & set(versions))
        return list(versions[-(self.latest or 1) :])


class ModelConfig(_Strict):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    # What runs the model: ONNX Runtime (CPU, or a GPU through its CUDA/TensorRT execution providers), or
    # TensorRT itself (GPU only). `platform` is accepted as the older spelling.
    backend: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", validation_alias=AliasChoices("backend", "platform")
    )
    # The GPU this model's instances run on (GPU backends and execution providers only).
    device_id: int = Field(0, ge=0)
    # Largest N one request may carry (INVALID_ARGUMENT beyond): bounds the memory a request pins.
    max_candidates: int = Field(2048, ge=1)
    inputs: list[TensorConfig] = Field(min_length=1)
    # Exactly one: the per-candidate float32 score the Rank API returns.
    outputs: list[TensorConfig] = Field(min_length=1, max_length=1)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    # How many of this model's batches may run at once (one backend session each).
    instances: int = Field(1, ge=1, le=64)
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)
    tensorrt: TensorRtConfig = Field(default_factory=TensorRtConfig)
    # The load-time parity check's tolerance, when meta.json's golden `atol` (set for the CPU that made the
    # goldens) is not the right one for this config's device; by default a GPU session widens it to what
    # its arithmetic warrants (backends/base.py: Session.parity_atol).
    parity_atol: float | None = Field(None, gt=0)
    # Default: the latest version only, as TF Serving does; a rollout adds the versions it names.
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    # Whether a new version takes the traffic once it is AVAILABLE while rollout.yaml names no stable version
    # (TF Serving's and Triton's default). False, the default: a new version loads and warms up but takes no
    # traffic until `adrank promote` or a canary routes to it, so publishing never changes what serves.
    latest_serves: bool = False
    # The p99 request latency this model should stay under, in ms: what the dashboard's summary row holds its
    # p99 against. 10 ms: the budget the Tuning measurements and the deploy/ alert (AdrankLatencyP99AboveBudget)
    # use, within the few-millisecond auctions of ads servers; set it to what this model's callers allow.
    latency_budget_ms: float = Field(10.0, gt=0)
    # A JSON file beside config.yaml with golden inputs (meta.json's `golden.inputs` format): what
    # `adrank publish` runs a new version on when the model has no current version to take them from.
    sample: str | None = None
    # A context tower whose outputs are cached per distinct context (ONNX Runtime, per_request layout).
    context_tower: ContextTowerConfig | None = None

    @model_validator(mode="after")
    def _signature(self) -> ModelConfig:
        names = [t.name for t in self.inputs] + [t.name for t in self.outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tensor names must be unique: {duplicates}")
        if not any(t.role == "candidate" for t in self.inputs):
            raise ValueError("inputs: at least one candidate input is needed (it gives N)")
        score = self.outputs[0]
        if score.dtype != "float32" or score.shape or score.role != "candidate":
            raise ValueError(f"outputs: '{score.name}' must be a float32 candidate score with shape []")
        if self.batching.max_queue_rows < self.max_candidates:
            raise ValueError("batching.max_queue_rows must be >= max_candidates")
        text = [t.name for t in self.inputs if t.tokenizer is not None]
        if text and self.batching.context_layout != "per_request":
            raise ValueError(f"text input {text[0]!r} needs batching.context_layout per_request (one text per request)")
        self._check_context_tower()
        return self

    def _check_context_tower(self) -> None:
        tower = self.context_tower
        if tower is None:
            return
        if self.backend != "onnxruntime":
            raise ValueError(f"context_tower: the {self.backend} backend cannot cut a graph; use onnxruntime")
        if self.batching.context_layout != "per_request":
            raise ValueError("context_tower needs batching.context_layout per_request (one context row per request)")
        if tower.output == self.score_output or self.input(tower.output) is not None:
            raise ValueError(f"context_tower.output '{tower.output}' must be a graph output other than the score")

    @property
    def score_output(self) -> str:
        return self.outputs[0].name

    def input(self, name: str) -> TensorConfig | None:
        return next((t for t in self.inputs if t.name == name), None)

    def core_signature(self) -> core.ModelSignature:
        """What the core batches: a text input is a row of `max_bytes` UTF-8 bytes."""
        specs: list[core.TensorSpec] = []
        for t in self.inputs:
            role = core.Role.CONTEXT if t.role == "context" else core.Role.CANDIDATE
            if t.tokenizer is not None:
                specs.append(core.TensorSpec(t.name, "uint8", [t.tokenizer.max_bytes], role))
            else:
                specs.append(core.TensorSpec(t.name, t.dtype, t.shape, role))
        outputs = [core.TensorSpec(t.name, t.dtype, t.shape) for t in self.outputs]
        return core.ModelSignature(inputs=specs, outputs=outputs)

    def batcher_options(self, tenants: core.TenantOptions | None = None) -> core.BatcherOptions:
        """The core batcher's options; `tenants` (the server's, adrank/tenants.py) default to the core's."""
        options = core.BatcherOptions()
        b = self.batching
        options.max_batch_rows = b.max_batch_rows
        options.preferred_batch_rows = list(b.preferred_batch_rows)
        options.max_queue_delay_us = b.max_queue_delay_us
        options.max_queue_rows = b.max_queue_rows
        options.max_request_rows = self.max_candidates
        options.max_batch_requests = b.max_batch_requests
        options.priority_levels = b.priority_levels
        options.default_priority = b.default_class
        options.max_predicted_wait_us = b.max_predicted_wait_us
        options.default_deadline_us = b.default_deadline_us
        options.adaptive_lifo_us = b.adaptive_lifo_us
        if tenants is not None:
            options.tenants = tenants
        options.idle_dispatch = b.idle_dispatch
        options.pad_to_preferred = b.pad_to_preferred
        options.context_layout = (
            core.ContextLayout.PER_REQUEST if b.context_layout == "per_request" else core.ContextLayout.BROADCAST
        )
        return options


def load_model_config(path: Path) -> ModelConfig:
    """Parses and validates one config.yaml; ConfigError names the file and the field."""
    config = read_yaml(path, ModelConfig, ConfigError)
    if config.name != path.parent.name:
        raise ConfigError(f"{path}: name: '{config.name}' must equal the model's folder name '{path.parent.name}'")
    return config
