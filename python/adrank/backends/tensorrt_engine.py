"""TensorRT engines: the optimisation profiles a model's batches need, building an engine from the
model's ONNX once, and the cache beside the model that makes every later load a deserialization.

Optimisation profiles. TensorRT picks kernels for the shapes a profile declares (min, opt, max per
input). The batcher closes batches at the preferred sizes, so the row range 1..max_batch_rows is cut at
them into buckets, one profile each: [1, p0], [p0+1, p1], ..., [.., max_batch_rows], opt at the bucket's
top (where the batcher puts most batches). Requests per batch range 1..min(bucket top,
max_batch_requests); token lengths 1..max_length, opt at the longest (backends/graph.py names what each
input's dims count). A session holds one execution context per profile and runs a batch on the
smallest one whose bucket holds its rows.

The cache: `<version>/tensorrt/<gpu>-sm<cc>-trt<version>-<precision>-<digest>.engine`. An engine only
runs on the GPU model and TensorRT version it was built with, hence both in the name; the digest covers
everything else the build depends on (the model file's sha256, the profiles, the builder settings), so
a changed config builds anew rather than loading a stale engine. The file is written to a temporary
name and renamed: a concurrent load (another instance, another server on the same repository) sees a
whole engine or none. A version directory that cannot be written (a read-only repository) is served
from an engine kept in memory, with a warning. An engine file that no longer deserializes (a driver
upgrade) is rebuilt and replaced.

ONNX Runtime's TensorRT execution provider gets the same profiles and settings as provider options,
and its engine cache in `<version>/tensorrt/ort-<gpu>-sm<cc>-trt<version>/`.

Numerics: fp32 unless `tensorrt.precision: fp16`; in fp32 the builder's TF32 flag (on by default in
TensorRT) is cleared, so that scores match the CPU's within 1e-4.

Thread-safety: `load_engine` is called once per version being loaded (the backend shares the engine
among the version's instances); two processes loading the same version at once may both build, and the
rename makes the last one's file the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import adrank._core as core
from adrank.backends.base import BackendError
from adrank.backends.graph import InputDims, ModelGraph
from adrank.repository.config import ModelConfig, TensorRtConfig
from adrank.repository.meta import sha256_file

log = logging.getLogger("adrank.backends.tensorrt")

CACHE_DIR = "tensorrt"
# The TensorRT major version ONNX Runtime 1.31's TensorRT execution provider is built against: it
# dlopens these libraries by name.
ORT_TENSORRT_MAJOR = 10
ORT_TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
INSTALL_HINT = "pip install 'adrank[gpu]' (README: GPU serving)"


@cache
def _import_tensorrt() -> tuple[ModuleType | None, str | None]:
    """The `tensorrt` module (its import loads TensorRT's libraries), or why it does not load."""
    try:
        import tensorrt
    except Exception as error:  # ImportError, or OSError from a library that is missing
        return None, f"the TensorRT Python package does not load ({error}): {INSTALL_HINT}"
    return tensorrt, None


def tensorrt_module() -> ModuleType:
    trt, reason = _import_tensorrt()
    if trt is None:
        raise BackendError(str(reason))
    return trt


def unavailable_reason() -> str | None:
    """Why ONNX Runtime's TensorRT execution provider cannot run in this process, or None."""
    trt, reason = _import_tensorrt()
    if trt is None:
        return reason
    major = int(trt.__version__.split(".")[0])
    if major != ORT_TENSORRT_MAJOR:
        return f"TensorRT {trt.__version__} is installed; ONNX Runtime's provider needs TensorRT {ORT_TENSORRT_MAJOR}"
    for library in ORT_TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(library)
        except OSError as error:
            return f"{library} does not load ({error})"
    return None


# ---- profiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: batches of `low`..`high` rows; per graph input (min, opt, max) shapes."""

    low: int
    high: int
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def row_buckets(config: ModelConfig) -> list[tuple[int, int]]:
    """The row ranges the preferred batch sizes cut 1..max_batch_rows into."""
    batching = config.batching
    tops = [*batching.preferred_batch_rows]
    if not tops or tops[-1] != batching.max_batch_rows:
        tops.append(batching.max_batch_rows)
    buckets, low = [], 1
    for top in tops:
        buckets.append((low, top))
        low = top + 1
    return buckets


def optimization_profiles(config: ModelConfig, dims: dict[str, InputDims]) -> list[Profile]:
    max_tokens = max((t.tokenizer.max_length for t in config.inputs if t.tokenizer), default=1)
    profiles = []
    for low, high in row_buckets(config):
        requests = min(high, config.batching.max_batch_requests or high)
        shapes = {
            name: (d.shape(low, 1, 1), d.shape(high, requests, max_tokens), d.shape(high, requests, max_tokens))
            for name, d in dims.items()
        }
        profiles.append(Profile(low, high, shapes))
    return profiles


def execution_provider_options(path: Path, config: ModelConfig, dims: dict[str, InputDims]) -> dict[str, Any]:
    """ONNX Runtime's TensorRT provider options for this model (the stream and device added by the caller)."""
    settings = config.tensorrt
    profiles = optimization_profiles(config, dims)

    def shapes(which: int) -> str:
        # One profile after another, each naming every input: ONNX Runtime's format for several profiles.
        return ",".join(
            f"{name}:{'x'.join(map(str, shape[which]))}" for p in profiles for name, shape in p.shapes.items()
        )

    options: dict[str, Any] = {
        "trt_fp16_enable": settings.precision == "fp16",
        "trt_max_workspace_size": settings.workspace_mb << 20,
        "trt_builder_optimization_level": settings.builder_optimization_level,
        "trt_profile_min_shapes": shapes(0),
        "trt_profile_opt_shapes": shapes(1),
        "trt_profile_max_shapes": shapes(2),
    }
    cache_dir = _cache_dir(path.parent, f"ort-{_device_key(config.device_id)}") if settings.cache else None
    if cache_dir is not None:
        options.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable=True,
            trt_timing_cache_path=str(cache_dir),
        )
    return options


# ---- the engine and its cache ------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _device_key(device_id: int) -> str:
    """GPU model, compute capability and TensorRT version: what an engine is only valid for."""
    trt = tensorrt_module()
    try:
        name = core.cuda_device_name(device_id)
        major, minor = core.cuda_compute_capability(device_id)
    except core.CoreError as error:
        raise BackendError(f"CUDA device {device_id}: {error}") from error
    return f"{_slug(name)}-sm{major}{minor}-trt{trt.__version__}"


def _cache_dir(version_dir: Path, sub: str = "") -> Path | None:
    directory = version_dir / CACHE_DIR / sub
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("%s: cannot keep TensorRT engines here (%s); engines are built at every load", directory, error)
        return None
    return directory


def engine_file_name(device_key: str, settings: TensorRtConfig, digest: str) -> str:
    return f"{device_key}-{settings.precision}-{digest[:16]}.engine"


def build_digest(model_sha256: str, settings: TensorRtConfig, profiles: list[Profile]) -> str:
    """Everything an engine's build depends on besides the GPU and TensorRT, hashed."""
    record = {
        "model_sha256": model_sha256,
        "settings": settings.model_dump(exclude={"cache"}),
        "profiles": [[p.low, p.high, sorted((n, list(map(list, s))) for n, s in p.shapes.items())] for p in profiles],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class _Logger:
    """TensorRT's log, into this server's (`adrank.backends.tensorrt`)."""

    @staticmethod
    def create(trt: Any) -> Any:  # the tensorrt module (untyped): its ILogger is subclassed here
        levels = {
            trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
            trt.ILogger.Severity.ERROR: logging.ERROR,
            trt.ILogger.Severity.WARNING: logging.WARNING,
            trt.ILogger.Severity.INFO: logging.DEBUG,
            trt.ILogger.Severity.VERBOSE: logging.DEBUG,
        }

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                log.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

        return Logger()


@cache
def trt_logger() -> Any:
    """One logger for the process: TensorRT's builders and runtimes share it."""
    return _Logger.create(tensorrt_module())


@dataclass
class EngineLoad:
    engine: Any
    profiles: list[Profile]
    source: str  # "cache", "built" (and cached) or "built (not cached)"
    path: Path | None


def load_engine(graph: ModelGraph) -> EngineLoad:
    """The version's engine for this GPU: from the cache, or built from the ONNX file (and cached)."""
    trt = tensorrt_module()
    config = graph.config
    profiles = optimization_profiles(config, graph.dims)
    digest = build_digest(sha256_file(graph.path), config.tensorrt, profiles)
    cache_dir = _cache_dir(graph.path.parent) if config.tensorrt.cache else None
    cached = cache_dir / engine_file_name(_device_key(config.device_id), config.tensorrt, digest) if cache_dir else None
    runtime = trt.Runtime(trt_logger())
    if cached is not None and cached.is_file():
        engine = runtime.deserialize_cuda_engine(cached.read_bytes())
        if engine is not None:
            return EngineLoad(engine, profiles, "cache", cached)
        log.warning("%s does not deserialize on this GPU/driver any more: rebuilding it", cached)
    serialized = build_serialized_engine(trt, graph, profiles)
    if cached is not None:
        _write_atomically(cached, serialized)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise BackendError(f"{graph.path}: TensorRT built an engine it cannot deserialize (its log above says why)")
    return EngineLoad(engine, profiles, "built" if cached else "built (not cached)", cached)


def build_serialized_engine(trt: ModuleType, graph: ModelGraph, profiles: list[Profile]) -> bytes:
    settings = graph.config.tensorrt
    builder = trt.Builder(trt_logger())
    network = builder.create_network(0)  # explicit batch: the only mode of TensorRT 10
    parser = trt.OnnxParser(network, trt_logger())
    if not parser.parse_from_file(str(graph.path)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{graph.path}: TensorRT cannot parse it: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    builder_config.builder_optimization_level = settings.builder_optimization_level
    if settings.precision == "fp16":
        builder_config.set_flag(trt.BuilderFlag.FP16)
    else:
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            trt_profile.set_shape(name, low, opt, high)
        if builder_config.add_optimization_profile(trt_profile) < 0:
            raise BackendError(f"{graph.path}: TensorRT refused the profile for rows {profile.low}..{profile.high}")
    log.info("%s: building a TensorRT engine (%s, %d profiles)", graph.path, settings.precision, len(profiles))
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise BackendError(f"{graph.path}: TensorRT could not build an engine (its log above says why)")
    return bytes(serialized)


def _parser_error(error: Any) -> str:
    # str() names the node, its name and operator, and the description, whatever the accessors' form.
    return str(error)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary: str | None = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            temporary = f.name
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        log.warning("%s: cannot write the engine (%s); it is served from memory", path, error)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
